"""The architecture matrix: which model families massmech measures end to end, and how.

For each tiny random model (:data:`massmech.core.catalog.TINY_MODELS` and
:data:`~massmech.core.catalog.ARCH_MODELS`) :func:`architecture_row` runs the whole pipeline:
``doctor`` -> ``capture_stats`` -> ``detect_massive`` -> ``frequency_analysis`` (RoPE models) ->
one disruption, and records what exists (stages per site, RoPE layout, rotary dims) and what
failed, with the error's message: a step that cannot run is reported, never skipped silently.
``python -m massmech.report.architectures`` prints the table of ``docs/architectures.md``.

>>> row = architecture_row("tiny-llama")
>>> row["architecture"], row["rope"], row["pipeline"]
('LlamaForCausalLM', 'half, 16 of 16 dims', 'ok')
"""

from __future__ import annotations

import sys

import torch

from massmech.causal.disruption import Disruption
from massmech.causal.intervention import disrupt
from massmech.core.capture import capture_stats
from massmech.core.catalog import ARCH_MODELS, TINY_MODELS
from massmech.core.detect import detect_massive
from massmech.core.frequency import frequency_analysis
from massmech.core.loading import load_model
from massmech.diagnostics.doctor import doctor
from massmech.errors import MassmechError

COLUMNS = ("model", "architecture", "rope", "stages", "doctor", "pipeline")


def architecture_row(name: str) -> dict[str, str]:
    """One model's row of the matrix (see the module docstring)."""
    model = load_model(name)
    spec = model.rope_or_none
    row = {"model": name, "architecture": model.info.architecture,
           "rope": "none" if spec is None else f"{spec.layout}, {spec.rotary_dim} of {spec.d_head} dims",
           "stages": "; ".join(f"{s}: {'/'.join(model.stages(s))}" for s in ("q", "k", "v"))}
    verdict = doctor(model)
    row["doctor"] = "ok" if verdict["ok"] else "failed: " + ", ".join(f"{k} ({v})" for k, v in verdict["errors"].items())
    if verdict["ok"] and verdict["skipped"]:
        row["doctor"] += "; skipped " + ", ".join(f"{k} ({v})" for k, v in verdict["skipped"].items())
        row["doctor"] += "; rope_matches_config" if verdict["checks"].get("rope_matches_config") else ""
    steps = []
    try:
        tokens = [[5 + (7 * i) % 200 for i in range(32)] for _ in range(2)]
        stats = capture_stats(model, tokens, progress=False)
        steps.append("capture")
        detect_massive(stats, lam=1.2)
        steps.append("detect")
        if spec is not None:
            frequency_analysis(stats, context_len=32)
            steps.append("frequency")
        d = Disruption(target="qk", stage="pre", rule="topk", k=2)
        with torch.inference_mode(), disrupt(model, d):
            model.logits(torch.tensor(tokens))
        steps.append("disruption")
        row["pipeline"] = "ok"
    except MassmechError as err:  # a clear, documented limitation
        row["pipeline"] = f"stops after {steps[-1] if steps else 'loading'}: {type(err).__name__}: {err}"
    return row


def markdown(rows: list[dict[str, str]]) -> str:
    """The matrix as a markdown table."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(str(r[c]).replace("|", "/") for c in COLUMNS) + " |" for r in rows]
    return "\n".join(lines)


def main() -> None:  # pragma: no cover - exercised by tests/test_architectures.py
    rows = [architecture_row(name) for name in (*TINY_MODELS, *ARCH_MODELS)]
    sys.stdout.write(markdown(rows) + "\n")


if __name__ == "__main__":  # pragma: no cover
    main()
