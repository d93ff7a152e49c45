"""The disruption vocabulary, in one place: what a :class:`~massmech.causal.disruption.Disruption`
may say, with one line on each choice. Imports nothing heavy: the CLI builds its choices and help
from it without importing torch.

>>> CONTROLS[1], REPLACE_HELP["pooled_mean"]
('matched', "one pooled mean per head (the paper's code)")
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from massmech.errors import AnalysisError, DisruptionError

if TYPE_CHECKING:
    import pandas as pd

TARGETS = {"q": ("q",), "k": ("k",), "qk": ("q", "k")}
STAGES = ("pre", "post")
RULES = ("lambda", "topk", "dims")
SELECTIONS = ("prompt", "calibration")
REPLACEMENTS = ("mean", "zero", "calib_mean", "pooled_mean", "rotated_mean")
CONTROLS = (None, "matched", "lowest", "random", "band-low", "band-mid", "band-high", "band-matched")
MATCHED_CONTROLS = ("matched", "band-matched")  # controls matched in removed variance
# a sweep's controls: a Disruption's, and "kl" (the matched control scaled to the disruption's KL on neutral text)
SWEEP_CONTROLS = (*CONTROLS[1:], "kl")
KV_CACHE = ("prefill", "every_step")
GRANULARITIES = ("dim", "pair")
GRANULARITY_HELP = {
    "dim": "each selected coordinate alone (the paper's code)",
    "pair": "both coordinates of each selected RoPE pair (a control then picks whole pairs)",
}

SCORERS = ("strict", "contains", "first-line", "rank")
#: Greedy tokens of the generating scorers in ``massmech reproduce --quick`` (the same code on little
#: data; generation is most of a quick run's time). The full runs keep their own: 32 (the paper preset,
#: the quant study) or 16 (other sweeps)
QUICK_NEW_TOKENS = 12
SCORER_HELP = {
    "strict": "every answer token is the argmax, teacher-forced (one pass; equal to greedy generation)",
    "contains": "the gold answer appears anywhere in the greedy reply, up to its EOS or end of turn (the paper's "
                "code: `label in answer` in run_experiment.py)",
    "first-line": "the gold answer appears in the first line of the greedy reply",
    "rank": "the gold answer's summed log-probability is the highest among it and the task's distractors "
            "(kv_lookup: the prompt's other values; knowledge_conflict: the memorised capital); chance 1/(1 + distractors)",
}
REPLACE_HELP = {
    "mean": "each dim's mean over the prompt",
    "zero": "zero",
    "calib_mean": "each dim's mean over a calibration corpus",
    "pooled_mean": "one pooled mean per head (the paper's code)",
    "rotated_mean": "post-RoPE only: the prompt's mean before RoPE, rotated to each position (what the rotation "
                    "gives; a post-RoPE 'mean' averages vectors that point in different directions)",
}
CONTROL_HELP = {
    "matched": "random non-massive dims removing the same token variance per head",
    "lowest": "as many lowest-norm dims (the paper's control)",
    "random": "as many random non-massive dims",
    "band-low": "as many random non-massive dims of the slowest third of the RoPE pairs",
    "band-mid": "the same, middle third",
    "band-high": "the same, fastest third",
    "band-matched": "random non-massive dims of the same thirds of the RoPE pairs as each head's massive dims, "
                    "removing the same token variance",
}

# The official code's setting per model family, read in MingyuJ666/Rope_with_LLM at 443a763:
# top-k per head on post-RoPE Q and K under ``if q_len != 1``, in modeling_llama.py l. 551-610 (k = 1,
# pooled mean), modeling_qwen2.py l. 428-479 (k = 3, pooled mean) and modeling_gemma2.py l. 402-460
# (k = 22, the massive dims set to zero, the lowest-norm control set to its pooled mean).
# architecture -> (k, replacement of the massive dims, replacement of the lowest-norm control)
PAPER_SETTINGS = {
    "LlamaForCausalLM": (1, "pooled_mean", "pooled_mean"),
    "Qwen2ForCausalLM": (3, "pooled_mean", "pooled_mean"),
    "Gemma2ForCausalLM": (22, "zero", "pooled_mean"),
}


def paper_setting(architecture: str) -> tuple[int, str, str]:
    """The official code's ``(k, replacement, lowest-norm control's replacement)`` for a model family.

    Raises:
        DisruptionError: The official code has no setting for this architecture.

    >>> paper_setting("LlamaForCausalLM"), paper_setting("Gemma2ForCausalLM")
    ((1, 'pooled_mean', 'pooled_mean'), (22, 'zero', 'pooled_mean'))
    """
    if architecture not in PAPER_SETTINGS:
        known = ", ".join(f"{a} k={k} {r}" for a, (k, r, _) in PAPER_SETTINGS.items())
        raise DisruptionError(
            f"the paper's code has no setting for {architecture} (it has {known}): choose k and the "
            "replacement yourself (SweepConfig(paper_settings=False, ks=(K,), replace=...), or "
            "--no-paper-settings --ks K --replace R) and name the rows for what they are"
        )
    return PAPER_SETTINGS[architecture]


def primary_scorer(table: pd.DataFrame, scorer: str | None = None) -> pd.DataFrame:
    """The rows of a quant table scored by ``scorer`` (default: its first scorer; tables from before
    scorers: all of them); rows of other measures are kept. Figures and wide tables draw these.

    Raises:
        AnalysisError: ``scorer`` is not one of the table's (names those it has).

    >>> import pandas as pd
    >>> t = pd.DataFrame({"measure": ["accuracy"] * 2 + ["perplexity"], "scorer": ["rank", "strict", None]})
    >>> primary_scorer(t).scorer.dropna().tolist(), primary_scorer(t, "strict").scorer.dropna().tolist()
    (['rank'], ['strict'])
    """
    scorers = list(dict.fromkeys(table.scorer.dropna())) if "scorer" in table else []
    if scorer is not None and scorer not in scorers:
        raise AnalysisError(f"the table has no {scorer!r} rows; its scorers are {scorers}")
    if not scorers:
        return table
    return table[table.scorer.isna() | (table.scorer == (scorer or scorers[0]))]
