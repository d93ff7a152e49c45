"""massmech: massive values in the queries and keys of RoPE self-attention.

Data flows one way: a model (:func:`load_model`) -> captured statistics (:func:`capture_stats`)
-> analysis tables (:func:`detect_massive`, :func:`frequency_analysis`) -> figures
(:mod:`massmech.plotting`).

Reference: Jin et al., "Massive Values in Self-Attention Modules are the Key to Contextual
Knowledge Understanding", ICML 2025 (arXiv 2502.01563).
"""

from massmech.capture import CaptureError, QKVStats, capture_stats
from massmech.detect import detect_massive
from massmech.frequency import FrequencyAnalysis, frequency_analysis
from massmech.models import (
    DEFAULT_MODEL,
    LoadedModel,
    ModelInfo,
    ModelLoadError,
    available_models,
    load_model,
    wrap,
)
from massmech.rope import RopeError, RopeReport, RopeSpec, verify_rope

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_MODEL",
    "CaptureError",
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
