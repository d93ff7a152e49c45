"""The quantization study's data: calibration and held-out token windows, the massive K dims and the clean model's statistics."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from massmech.core.capture import capture_stats
from massmech.core.corpus import calibration_split
from massmech.core.detect import massive_mask
from massmech.core.models import LoadedModel
from massmech.studies.quant.config import QuantStudyConfig


# --------------------------------------------------------------------------- data
@dataclass
class StudyData:
    """Calibration and held-out windows of one model (disjoint), and the clean statistics."""

    calib: list[list[int]]
    held: list[list[int]]
    keep_k: torch.Tensor | None = None  # [layer, kv_head, d_head] massive K dims as cached
    clean: Any = None  # QKVStats of the clean model on the held-out windows
    extra: dict = field(default_factory=dict)


def study_windows(model: LoadedModel, cfg: QuantStudyConfig) -> tuple[list[list[int]], list[list[int]]]:
    """Full-length calibration windows, then held-out windows from later articles (:func:`~massmech.core.corpus.calibration_split`)."""
    return calibration_split(model, calib_tokens=cfg.calib_tokens, eval_tokens=cfg.eval_tokens, seq_len=cfg.seq_len,
                             seed=cfg.seed)


def prepare(model: LoadedModel, cfg: QuantStudyConfig) -> StudyData:
    """Windows, the massive K dims (post-RoPE, on the calibration windows) and clean statistics."""
    calib, held = study_windows(model, cfg)
    data = StudyData(calib, held)
    cached = model.stages("k")[-1]  # the stage a KV cache holds: post-RoPE where there is RoPE
    stats = capture_stats(model, calib, sites=("k",), stages=(cached,), progress=False)
    m = stats.norm("k", cached)  # [layer, kv_head, d_head]
    data.keep_k = massive_mask(m, lam=cfg.lam)
    data.clean = clean_stats(model, held)
    return data


def clean_stats(model: LoadedModel, windows: Sequence[Sequence[int]], batch_size: int = 8) -> Any:
    """Q and K statistics (both stages where there is RoPE) on ``windows``: what preservation compares."""
    stages = ("pre", "post") if model.has_rope else ("pre",)
    return capture_stats(model, windows, sites=("q", "k"), stages=stages, batch_size=batch_size, progress=False)
