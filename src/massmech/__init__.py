"""massmech: massive values in the queries and keys of RoPE self-attention.

Data flows one way: a model (:func:`load_model`) -> captured statistics (:func:`capture_stats`)
-> analysis tables (:func:`detect_massive`, :func:`frequency_analysis`) -> figures
(:mod:`massmech.plotting`). Causal tests: a :class:`Disruption` (massive Q/K values replaced by
their mean, or a control) scored on the task suite (:func:`get_task`, :func:`evaluate`),
swept over grids by :func:`run_sweep`. Controlled twins (:func:`run_twins`, :mod:`massmech.twins`):
small models trained from the same weights on the same data, differing only in RoPE / learned
absolute positions / NoPE. Quantization (:func:`run_quant_study`, :class:`QuantSpec`): which
quantizers keep the massive values, and what that does to contextual vs parametric tasks.

Reference: Jin et al., "Massive Values in Self-Attention Modules are the Key to Contextual
Knowledge Understanding", ICML 2025 (arXiv 2502.01563).
"""

from massmech.capture import CaptureError, QKVStats, capture_stats
from massmech.compare import Comparison, compare
from massmech.detect import detect_massive
from massmech.evaluate import evaluate, generate_exact, summarize
from massmech.frequency import FrequencyAnalysis, frequency_analysis
from massmech.interventions import (
    Disruption,
    DisruptionError,
    Intervention,
    NoOpDisruptionError,
    disrupt,
)
from massmech.models import (
    DEFAULT_MODEL,
    LoadedModel,
    ModelInfo,
    ModelLoadError,
    available_models,
    load_model,
    wrap,
)
from massmech.quant_study import QuantSpec, QuantStudyConfig, run_quant_study
from massmech.rope import RopeError, RopeReport, RopeSpec, verify_rope
from massmech.sweeps import SweepConfig, ablate, run_sweep
from massmech.tasks import Example, Task, TaskError, get_task
from massmech.twin_study import run_twins
from massmech.twin_train import TwinsConfig

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_MODEL",
    "CaptureError",
    "Comparison",
    "Disruption",
    "DisruptionError",
    "Example",
    "Intervention",
    "NoOpDisruptionError",
    "QuantSpec",
    "QuantStudyConfig",
    "SweepConfig",
    "Task",
    "TaskError",
    "TwinsConfig",
    "ablate",
    "compare",
    "disrupt",
    "evaluate",
    "generate_exact",
    "get_task",
    "run_quant_study",
    "run_sweep",
    "run_twins",
    "summarize",
    "FrequencyAnalysis",
    "LoadedModel",
    "ModelInfo",
    "ModelLoadError",
    "QKVStats",
    "RopeError",
    "RopeReport",
    "RopeSpec",
    "available_models",
    "capture_stats",
    "detect_massive",
    "frequency_analysis",
    "load_model",
    "verify_rope",
    "wrap",
]
