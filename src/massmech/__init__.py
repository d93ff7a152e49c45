"""massmech: massive values in the queries and keys of RoPE self-attention.

Data flows one way, and the subpackages follow it (imports point down only):

* :mod:`massmech.core` — measurement: loading (:func:`load_model`, :func:`wrap`), RoPE read from
  the model (:class:`RopeSpec`), streaming capture (:func:`capture_stats`), detection
  (:func:`detect_massive`), frequency analysis (:func:`frequency_analysis`), the critical pair
  (:func:`band_prediction`), attention logits by RoPE pair (:func:`attribute_logits`), corpora.
* :mod:`massmech.diagnostics` — :func:`verify_rope`, :func:`doctor`.
* :mod:`massmech.causal` — disruptions (:class:`Disruption`, :func:`disrupt`), tasks
  (:func:`get_task`), scoring (:func:`evaluate`).
* :mod:`massmech.infra` — atomic writes, run folders and manifests, the cell store, the study
  protocol, presets.
* :mod:`massmech.studies` — analyze, ablation sweeps (:func:`run_sweep`), quantization
  (:func:`run_quant_study`), controlled twins (:func:`run_twins`), comparisons (:func:`compare`).
* :mod:`massmech.report` — figures (``massmech.plotting``) and tables.
* :mod:`massmech.cli` — the ``massmech`` command.

Every public name is imported lazily (PEP 562): ``import massmech`` costs almost nothing, and
``from massmech import frequency_analysis`` loads only what that function needs.

Reference: Jin et al., "Massive Values in Self-Attention Modules are the Key to Contextual
Knowledge Understanding", ICML 2025 (arXiv 2502.01563).

>>> import massmech
>>> massmech.RopeSpec.__module__
'massmech.core.rope'
"""

from __future__ import annotations

import importlib
from typing import Any

from massmech._gc import gc_paused
from massmech.errors import (
    CaptureError,
    DisruptionError,
    MassmechError,
    ModelLoadError,
    NoOpDisruptionError,
    RopeError,
    RunDirError,
    TaskError,
)

__version__ = "0.1.0"

_LAZY = {  # public name -> module that defines it
    "DEFAULT_MODEL": "massmech.core.catalog",
    "available_models": "massmech.core.catalog",
    "load_model": "massmech.core.loading",
    "LoadedModel": "massmech.core.models",
    "ModelInfo": "massmech.core.models",
    "wrap": "massmech.core.models",
    "RopeSpec": "massmech.core.rope",
    "QKVStats": "massmech.core.qkvstats",
    "capture_stats": "massmech.core.capture",
    "detect_massive": "massmech.core.detect",
    "FrequencyAnalysis": "massmech.core.frequency",
    "frequency_analysis": "massmech.core.frequency",
    "BandPrediction": "massmech.core.critical",
    "band_prediction": "massmech.core.critical",
    "beyond_critical": "massmech.core.critical",
    "critical_pair_from_frequencies": "massmech.core.critical",
    "d_extra": "massmech.core.critical",
    "PairLogits": "massmech.core.attribution",
    "attribute_logits": "massmech.core.attribution",
    "group_logits": "massmech.core.attribution",
    "pair_logits": "massmech.core.attribution",
    "RopeReport": "massmech.diagnostics.verify_rope",
    "verify_rope": "massmech.diagnostics.verify_rope",
    "doctor": "massmech.diagnostics.doctor",
    "Disruption": "massmech.causal.disruption",
    "Intervention": "massmech.causal.intervention",
    "disrupt": "massmech.causal.intervention",
    "Example": "massmech.causal.tasks.base",
    "Task": "massmech.causal.tasks.base",
    "get_task": "massmech.causal.tasks.builtin",
    "evaluate": "massmech.causal.evaluate",
    "generate_exact": "massmech.causal.evaluate",
    "summarize": "massmech.causal.evaluate",
    "SweepConfig": "massmech.studies.ablation",
    "ablate": "massmech.studies.ablation",
    "run_sweep": "massmech.studies.ablation",
    "QuantSpec": "massmech.studies.quant.config",
    "QuantStudyConfig": "massmech.studies.quant.config",
    "run_quant_study": "massmech.studies.quant.study",
    "TwinsConfig": "massmech.studies.twins.config",
    "run_twins": "massmech.studies.twins.study",
    "Comparison": "massmech.studies.compare",
    "compare": "massmech.studies.compare",
}
_SUBMODULES = {"plotting": "massmech.plotting"}

__all__ = [
    "CaptureError", "DisruptionError", "MassmechError", "ModelLoadError", "NoOpDisruptionError",
    "RopeError", "RunDirError", "TaskError", *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name not in _LAZY and name not in _SUBMODULES:
        raise AttributeError(f"module 'massmech' has no attribute {name!r}")
    with gc_paused():  # a first use imports torch and more: no collection walks them midway
        module = importlib.import_module(_LAZY.get(name) or _SUBMODULES[name])
    value = getattr(module, name) if name in _LAZY else module
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY, *_SUBMODULES})

