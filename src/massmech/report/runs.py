"""The runs the claim ledger reads: each a study and a preset of the study registry, per model.

A :class:`LedgerRun` names a study (:func:`massmech.studies.registry.get_study`), one of its
presets and, per model, the overrides that make the run (e.g. Gemma-2's setting on Gemma-3). Its
folder under the runs root is ``<study>/<name>/<model>`` (``<study>/<name>`` for a study without a
model, the twins), and its command is the study's own CLI (``massmech <study> --preset ...``):
``massmech reproduce`` makes them all, and the ledger, the figures and the docs read them.

>>> run_folder("paper", "gemma3-270m")
'ablation/paper-k22-zero/gemma3-270m'
>>> print(command("paper", "gemma3-270m"))
massmech ablation --preset paper --models gemma3-270m --n 300 --no-paper-settings --ks 22 --replace zero --out runs/ablation/paper-k22-zero/gemma3-270m
"""

from __future__ import annotations

import dataclasses
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from massmech.core.catalog import EMBEDDED_MODELS

MODELS = EMBEDDED_MODELS  # the ledger's models: the embedded ones, offline
TWINS_MODEL = "toy twins"  # the ledger's name for the model-less twins run


@dataclasses.dataclass(frozen=True)
class LedgerRun:
    """One run of the ledger: a study, a preset, and per model its overrides and folder name.

    Attributes:
        study: A registered study name.
        preset: One of its presets.
        presets: Per model, another of its presets (e.g. a smaller grid where compute is dear).
        models: The models it runs on (``()``: the study takes no model).
        overrides: Config overrides for every model.
        per_model: Per model, overrides that make a named variant of the run (with ``names``).
        name: The folder name under the study (default: the preset).
        names: Per model, another folder name (a named variant).
        first_only: Made for the first of the models asked for only (a grid sweep on the default model).
        inputs: Per model, files the run reads that massmech does not make (e.g. another project's
            saved tensors, ``needs`` says how to get them): made for its own ``models`` whatever
            the ledger's, and skipped, with ``needs`` shown, where a file is missing.
        needs: How to get the ``inputs``.
    """

    study: str
    preset: str
    presets: Mapping[str, str] = dataclasses.field(default_factory=dict)
    models: tuple[str, ...] = MODELS
    overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    per_model: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
    name: str = ""
    names: Mapping[str, str] = dataclasses.field(default_factory=dict)
    first_only: bool = False
    inputs: Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    needs: str = ""

    def folder(self, model: str) -> str:
        name = self.names.get(model) or self.name or self.preset
        return f"{self.study}/{name}" if not self.models else f"{self.study}/{name}/{model}"

    def config_overrides(self, model: str) -> dict[str, Any]:
        return {**self.overrides, **self.per_model.get(model, {})}

    def preset_of(self, model: str) -> str:
        return self.presets.get(model, self.preset)


LEDGER_N = 300  # examples per task in the ledger's sweeps (fewer where a task's pool is smaller)

# The paper's own saved Q/K/V, layer 10 after RoPE ([1, tokens, heads, 128], fp16; github.com/MingyuJ666/
# Rope_with_LLM @443a763, saved_attn_scores/meta-llama/<folder>/, saved by its modeling_llama.py after
# apply_rotary_pos_emb): not redistributed here (the repository states no licence); analyses/paper_tensors.py
# copies them from a clone into PAPER_TENSORS_DIR and checks their sha256.
PAPER_TENSORS_DIR = "data/paper-tensors"
PAPER_TENSORS: dict[str, dict[str, Any]] = {
    "llama2-7b-chat": dict(folder="Llama-2-7b-chat-hf", rope_base=10_000.0, n_heads="q=32,k=32,v=32",
                           train_context=4096, train_context_source="Touvron et al. 2023, Llama 2 (arXiv:2307.09288), "
                           "Table 1: context length 4k for every Llama 2 model"),
    "llama3-8b-instruct": dict(folder="Meta-Llama-3-8B-Instruct", rope_base=500_000.0, n_heads="q=32,k=8,v=8",
                               train_context=8192, train_context_source="Meta Llama 3 model card (github.com/meta-llama/"
                               "llama3, MODEL_CARD.md): context length 8k for the 8B and 70B models"),
}


def paper_tensor_files(model: str) -> dict[str, str]:
    """Site -> path of one model's saved tensors under :data:`PAPER_TENSORS_DIR`.

    >>> paper_tensor_files("llama3-8b-instruct")["k"]
    'data/paper-tensors/Meta-Llama-3-8B-Instruct/k_merged_attn_weights_layer10.pt'
    """
    folder = PAPER_TENSORS[model]["folder"]
    return {site: f"{PAPER_TENSORS_DIR}/{folder}/{site}_merged_attn_weights_layer10.pt" for site in "qkv"}


def _saved(model: str) -> dict[str, Any]:
    """The analyze config of one model's saved tensors (after RoPE, layer 10, with its cited training context)."""
    spec = {k: v for k, v in PAPER_TENSORS[model].items() if k != "folder"}
    files = ",".join(f"{s}={p}" for s, p in paper_tensor_files(model).items())
    return dict(model="activations", activations=files, d_head=128, axes="bthd", stage="post", layer=10, **spec)


#: run key -> the run (the claims of :mod:`massmech.report.ledger` name these keys)
RUNS: dict[str, LedgerRun] = {
    "analyze": LedgerRun("analyze", "ledger"),
    # n = 300 where a task's pool allows (issue 26: drops of 0.06-0.08 need n of 300-600 to be seen)
    "main": LedgerRun("ablation", "main", overrides={"n": LEDGER_N}),
    # Gemma-3 has no official setting: the paper's protocol with Gemma-2's k = 22 and zero replacement, named so
    "paper": LedgerRun("ablation", "paper", overrides={"n": LEDGER_N},
                       per_model={"gemma3-270m": {"paper_settings": False, "ks": (22,), "replace": "zero"}},
                       names={"gemma3-270m": "paper-k22-zero"}),
    # issue 26: the same disruption scored by rank, where a bare-space first token cannot fail an answer
    "rank": LedgerRun("ablation", "rank", overrides={"n": LEDGER_N}),
    # issue 26, item 2: controls matched in effect (KL on neutral text), with the mean and with zero
    "effect": LedgerRun("ablation", "effect", overrides={"n": LEDGER_N}),
    "effect-zero": LedgerRun("ablation", "effect-zero", overrides={"n": LEDGER_N}),
    # issue 27, part 3: whole RoPE pairs vs single coordinates, against the KL-matched control
    "pairs-effect": LedgerRun("ablation", "pairs-effect", overrides={"n": LEDGER_N}),
    # n = 100 (issue 26, items 4 and 6): the head-to-head pairs of P7 v2 need more than the 40 of before
    "quant": LedgerRun("quant", "full", presets={"gemma3-270m": "core"}, overrides={"n": 100}),
    # issue 26, item 6: O3 over 10 stochastic roundings and random-row draws, n = 100
    "quant-draws": LedgerRun("quant", "qk-draws", overrides={"n": 100, "scorers": ("strict", "contains", "first-line",
                                                                                   "rank")}),
    # issue 26, item 6, by part: W_q only, W_k only, local or global layers only (round to nearest, one draw of
    # rows; no claim of its own: a results page and a figure); SmolLM2 has no local layers, so Q and K only
    "quant-parts": LedgerRun("quant", "qk-parts", presets={"smollm2-135m": "qk-sites"},
                             overrides={"n": 100, "scorers": ("strict", "contains", "first-line", "rank")}),
    "shift": LedgerRun("shift", "ledger"),
    "heads": LedgerRun("heads", "ledger"),
    "attribute": LedgerRun("attribute", "ledger"),  # no claim of its own: the band heat maps of the gallery
    "twins": LedgerRun("twins", "demo", models=(), overrides={"seeds": (1, 2)}),
    # issue 27, part 1: the band prediction on the user-supplied saved-tensor path, the paper's own tensors
    "saved": LedgerRun("analyze", "default", models=tuple(PAPER_TENSORS), name="paper-tensors",
                       per_model={m: _saved(m) for m in PAPER_TENSORS},
                       inputs={m: tuple(paper_tensor_files(m).values()) for m in PAPER_TENSORS},
                       needs="the paper's saved tensors: `python analyses/paper_tensors.py --from CLONE` (CLONE: a "
                             "clone of github.com/MingyuJ666/Rope_with_LLM)"),
    # the grid sweeps (no claim of their own: results pages and figures), on the first model asked for
    **{g: LedgerRun("ablation", g, first_only=True) for g in ("dose", "k", "layers")},
}


def models_of(run: str, models: tuple[str, ...] = MODELS) -> tuple[str, ...]:
    """The models a run is made for, of ``models`` (``(TWINS_MODEL,)`` for a model-less run).

    >>> models_of("twins"), models_of("dose"), models_of("main", ("tiny-llama",))
    (('toy twins',), ('smollm2-135m',), ('tiny-llama',))
    """
    r = RUNS[run]
    if not r.models:
        return (TWINS_MODEL,)
    if r.inputs:  # the models of its files, whatever the ledger's
        return r.models
    chosen = tuple(m for m in models if m in r.models or r.models == MODELS)
    return chosen[:1] if r.first_only else chosen


def run_folder(run: str, model: str) -> str:
    """The folder of a run for a model, under the runs root."""
    return RUNS[run].folder(model)


def config_of(run: str, model: str, *, quick: bool = False) -> Any:
    """The config of a run for a model (the study's preset with the run's overrides; ``quick``: its
    ``--quick`` version)."""
    from massmech.studies.registry import get_study

    r = RUNS[run]
    spec = get_study(r.study)
    cfg = spec.preset(r.preset_of(model), **({"model": model} if r.models else {}) | r.config_overrides(model))
    return spec.quick_config(cfg) if quick else cfg


def _flag(name: str, value: Any) -> str:
    flag = "--" + name.replace("_", "-")
    if isinstance(value, bool):
        return flag if value else "--no-" + name.replace("_", "-")
    if isinstance(value, (tuple, list)):
        return f"{flag} {','.join(map(str, value))}"
    return f"{flag} {shlex.quote(str(value))}"


def command(run: str, model: str, root: str = "runs") -> str:
    """The command line that makes a run (what the ledger shows for a run not yet made)."""
    from massmech.studies.registry import get_study

    r = RUNS[run]
    field = get_study(r.study).model_field
    model_flag = "" if not r.models or field in r.config_overrides(model) else " " + _flag(field, model)
    flags = "".join(" " + _flag(k, v) for k, v in r.config_overrides(model).items())
    return f"massmech {r.study} --preset {r.preset_of(model)}{model_flag}{flags} --out {root}/{r.folder(model)}"


def missing_inputs(run: str, model: str) -> list[str]:
    """The files a run reads that are not there (``[]`` for a run that reads none).

    >>> missing_inputs("main", "smollm2-135m")
    []
    """
    return [p for p in RUNS[run].inputs.get(model, ()) if not Path(p).is_file()]
