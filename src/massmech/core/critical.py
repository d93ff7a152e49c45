"""The critical RoPE pair: which pairs never complete a turn within the training context.

Liu et al. 2023 ("Scaling Laws of RoPE-based Extrapolation", arXiv 2310.05209) note that a pair
whose wavelength exceeds the training context ``T`` never sees a full period during training,
so only pairs below the *critical pair*

    ``k* = (d/2) * ln(T / 2 pi) / ln(base)``        (plain RoPE, ``d`` = rotated dims)

are trained on every phase; their *critical dimension* is ``d_extra = 2 * ceil(k*)``. Here the
pair index is continuous: ``k*`` is where the pairs' log-frequency crosses ``ln(2 pi / T)``,
interpolated linearly between neighbouring pairs (and extrapolated from the end segments), which
is exactly the closed form for geometric frequencies and also works for every other spectrum
(Llama-3 / YaRN scaled frequencies, partial rotary, Gemma-3's per-layer local/global bases):
the functions take the frequencies themselves.

A pair is *beyond* the critical pair when its wavelength is at least ``T`` (it completes at most
one turn inside the training context); for a monotone spectrum that is ``pair >= k*``, and the
pairs not beyond number ``ceil(k*)`` = ``d_extra / 2``.

:func:`predicted_table` compares the prediction with where massive dims and Q/K energy really
sit (used by :func:`massmech.frequency_analysis` with ``train_context``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from jaxtyping import Bool, Float
from torch import Tensor

from massmech.core.rope import RopeSpec
from massmech.errors import AnalysisError, RopeError

Frequencies = Float[np.ndarray, " pair"] | Float[Tensor, " pair"] | Sequence[float]


def _log_freq(inv_freq: Frequencies, train_context: float) -> np.ndarray:
    """Checked ``log(inv_freq)`` (strictly decreasing, positive) as float64."""
    freq = np.asarray(inv_freq.detach().cpu() if isinstance(inv_freq, Tensor) else inv_freq, dtype=np.float64)
    if freq.ndim != 1 or len(freq) < 2:
        raise RopeError(f"need a 1-D array of at least 2 pair frequencies, got shape {freq.shape}")
    if not (np.isfinite(freq).all() and (freq > 0).all()):
        raise RopeError(f"pair frequencies must be finite and positive, got {freq.tolist()[:8]}")
    if not (np.diff(freq) < 0).all():
        raise RopeError("pair frequencies must decrease strictly with the pair index (pair 0 fastest)")
    if not train_context > 0:
        raise AnalysisError(f"train_context must be a positive number of tokens, got {train_context}")
    return np.log(freq)


def critical_pair_from_frequencies(inv_freq: Frequencies, train_context: float) -> float:
    """The continuous critical pair ``k*``: where the pair wavelength crosses ``train_context``.

    Args:
        inv_freq: Angular frequency of each pair in radians per token, strictly decreasing
            (pair 0 fastest), e.g. :meth:`RopeSpec.frequencies`.
        train_context: The training context length ``T`` in tokens.

    Returns:
        ``k*`` in pair-index units, interpolated linearly in log-frequency between the two pairs
        whose wavelengths bracket ``T``; outside the spectrum it is extrapolated from the end
        segment (negative: every pair is beyond; above ``n_pairs - 1``: none is).

    Raises:
        RopeError: The frequencies are not positive and strictly decreasing.

    >>> inv_freq = 10_000 ** (-np.arange(0, 128, 2) / 128)  # Llama-2: base 1e4, d_head 128
    >>> round(critical_pair_from_frequencies(inv_freq, 4096), 2)
    45.03
    """
    logf = _log_freq(inv_freq, train_context)
    target = math.log(2 * math.pi / train_context)
    # index of the segment [i, i + 1] holding the crossing (clipped to the end segments)
    i = int(np.clip(np.searchsorted(-logf, -target) - 1, 0, len(logf) - 2))
    return float(i + (logf[i] - target) / (logf[i] - logf[i + 1]))


def beyond_critical(inv_freq: Frequencies, train_context: float) -> Bool[np.ndarray, " pair"]:
    """Per pair: is its wavelength at least ``train_context`` (at most one turn while training)?

    For a monotone spectrum this is ``pair >= k*``.

    >>> beyond_critical(10_000 ** (-np.arange(0, 8, 2) / 8), 100).tolist()  # wavelengths 6.3 .. 6283
    [False, False, True, True]
    """
    logf = _log_freq(inv_freq, train_context)
    return 2 * np.pi / np.exp(logf) >= train_context


def d_extra(inv_freq: Frequencies, train_context: float) -> int:
    """Liu et al.'s critical dimension ``2 * ceil(k*)``, clipped to ``[0, rotary_dim]``.

    >>> d_extra(10_000 ** (-np.arange(0, 128, 2) / 128), 4096)  # Llama-2
    92
    """
    k = critical_pair_from_frequencies(inv_freq, train_context)
    n_pairs = len(np.asarray(inv_freq))
    return int(2 * min(max(math.ceil(k), 0), n_pairs))


@dataclass(frozen=True, repr=False)
class BandPrediction:
    """Output of :func:`band_prediction`: the critical pair of one layer and the pairs beyond it.

    Attributes:
        layer: The layer.
        train_context: Training context length in tokens.
        critical_pair: ``k*`` (continuous pair index).
        d_extra: ``2 * ceil(k*)`` clipped to ``[0, rotary_dim]``.
        beyond: Per pair, whether it is at or beyond ``k*`` (wavelength >= ``train_context``).

    >>> bp = band_prediction(RopeSpec.from_base(10_000, 8), 0, train_context=100)
    >>> bp
    BandPrediction(layer=0, train_context=100, critical_pair=1.20, d_extra=4, beyond=2/4)
    >>> bp.base_rate, {k: v.tolist() for k, v in bp.groups().items()}
    (0.5, {'within': [True, True, False, False], 'beyond': [False, False, True, True]})
    """

    layer: int
    train_context: float
    critical_pair: float
    d_extra: int
    beyond: np.ndarray

    def __repr__(self) -> str:
        return (
            f"BandPrediction(layer={self.layer}, train_context={self.train_context:g}, "
            f"critical_pair={self.critical_pair:.2f}, d_extra={self.d_extra}, "
            f"beyond={int(self.beyond.sum())}/{len(self.beyond)})"
        )

    @property
    def base_rate(self) -> float:
        """Share of pairs beyond the critical pair (the chance rate of a hit).

        >>> band_prediction(RopeSpec.from_base(10_000, 8), 0, 100).base_rate
        0.5
        """
        return float(self.beyond.mean())

    def groups(self) -> dict[str, np.ndarray]:
        """Pair masks ``{"within": ..., "beyond": ...}``, ready for :func:`~massmech.core.attribution.group_logits`.

        >>> band_prediction(RopeSpec.from_base(10_000, 8), 0, 100).groups()["beyond"].tolist()
        [False, False, True, True]
        """
        return {"within": ~self.beyond, "beyond": self.beyond.copy()}


def band_prediction(spec: RopeSpec, layer: int, train_context: float) -> BandPrediction:
    """The critical pair of one layer of a model's RoPE and the pairs beyond it.

    Args:
        spec: The model's RoPE (per-layer frequencies, so Gemma-3's local and global layers differ).
        layer: The layer.
        train_context: Training context length in tokens.

    >>> from transformers import Gemma3TextConfig
    >>> spec = RopeSpec.from_hf_config(Gemma3TextConfig(num_hidden_layers=6, head_dim=64))
    >>> band_prediction(spec, 0, 32_768), band_prediction(spec, 5, 32_768)  # local 1e4, global 1e6
    (BandPrediction(layer=0, train_context=32768, critical_pair=29.74, d_extra=60, beyond=2/32), BandPrediction(layer=5, train_context=32768, critical_pair=19.83, d_extra=40, beyond=12/32))
    """
    freq = spec.frequencies(layer)
    return BandPrediction(
        layer=layer,
        train_context=train_context,
        critical_pair=critical_pair_from_frequencies(freq, train_context),
        d_extra=d_extra(freq, train_context),
        beyond=beyond_critical(freq, train_context),
    )


def predicted_table(
    pairs: pd.DataFrame, massive: pd.DataFrame, spec: RopeSpec, train_context: float
) -> tuple[pd.DataFrame, dict]:
    """Prediction vs measurement per (site, stage, layer), and a pooled summary per ``site.stage``.

    Args:
        pairs: Per (site, stage, layer, head, pair) energies (:func:`~massmech.core.frequency.pair_energy`).
        massive: The massive dims with their ``pair`` (-1 outside the rotary dims).
        spec: The RoPE spec.
        train_context: Training context length in tokens.

    Returns:
        ``(table, summary)``. Table columns: ``site, stage, layer, critical_pair, d_extra,
        base_rate`` (share of pairs beyond ``k*``), ``n_massive`` (massive dims in rotated pairs),
        ``hit_rate`` (their share at or beyond ``k*``), ``peak_pair`` (the pair with the most
        energy, summed over heads), ``peak_minus_critical`` (``peak_pair - k*``) and
        ``peak_beyond``. Summary per ``site.stage``: pooled ``hit_rate``, ``base_rate`` (the
        chance hit rate, weighted like the hits), ``lift`` and ``peak_beyond_share``.

    >>> import torch
    >>> from massmech.core.frequency import frequency_analysis
    >>> from massmech.core.activations import from_activations
    >>> x = torch.randn(1, 32, 2, 8, generator=torch.Generator().manual_seed(0))
    >>> q = x * torch.tensor([1, 1, 1, 6.0] * 2)  # the slowest pair (dims 3, 7) carries Q
    >>> fa = frequency_analysis(from_activations({"q": q}, rope=RopeSpec.from_base(10_000, 8)), lam=2, train_context=100)
    >>> fa.predicted[["critical_pair", "base_rate", "n_massive", "hit_rate", "peak_pair"]].round(2)
       critical_pair  base_rate  n_massive  hit_rate  peak_pair
    0            1.2        0.5          4       1.0          3
    >>> fa.summary["q.pre"]["critical_lift"]
    2.0
    """
    pred = {int(layer): band_prediction(spec, int(layer), train_context) for layer in pairs.layer.unique()}
    rows = []
    for (site, stage, layer), grp in pairs.groupby(["site", "stage", "layer"], sort=False):
        bp = pred[int(layer)]
        hits = massive[(massive.site == site) & (massive.stage == stage) & (massive.layer == layer)]
        hits = hits[hits.pair >= 0]
        energy = grp.groupby("pair").energy.sum()
        peak = int(energy.idxmax()) if energy.sum() > 0 else -1
        rows.append({
            "site": site, "stage": stage, "layer": layer, "critical_pair": bp.critical_pair,
            "d_extra": bp.d_extra, "base_rate": bp.base_rate, "n_massive": len(hits),
            "hit_rate": float(bp.beyond[hits.pair.to_numpy()].mean()) if len(hits) else np.nan,
            "peak_pair": peak,
            "peak_minus_critical": peak - bp.critical_pair if peak >= 0 else np.nan,
            "peak_beyond": bool(bp.beyond[peak]) if peak >= 0 else False,
        })
    table = pd.DataFrame(rows)
    summary = {}
    for (site, stage), grp in table.groupby(["site", "stage"], sort=False):
        n = grp.n_massive.sum()
        hit = float((grp.hit_rate.fillna(0) * grp.n_massive).sum() / n) if n else None
        base = float((grp.base_rate * grp.n_massive).sum() / n) if n else None
        summary[f"{site}.{stage}"] = {
            "critical_hit_rate": hit,
            "critical_base_rate": base,
            "critical_lift": hit / base if hit is not None and base else None,
            "peak_beyond_critical_share": float(grp.peak_beyond.mean()),
        }
    return table, summary
