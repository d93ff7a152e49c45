"""A robust emergence layer: where Q/K concentrate energy in slow RoPE pairs *beyond V*, with intervals.

A single threshold on one layer's low-half energy share is fragile (on SmolLM2 K's share at
layer 1 is 0.75031 against 0.75: at 0.7505 "emergence" jumps from layer 1 to 6), mixes layers
of different RoPE bases when "slow" is defined by pair index (Gemma-3's local and global
layers), and reads high on V too when the band covers most pairs. This measure instead uses:

* **wavelength-defined bands**: per layer, the pairs whose wavelength exceeds ``factor x C``
  (``C`` the context length; each layer's own base, so local and global layers are comparable);
* **concentration** = the band's share of a head's energy divided by the band's share of the
  pairs (1 = no concentration), so a band that covers most pairs cannot look concentrated;
* **Q/K minus V** at the same layer (V is grouped into the same pairs and never rotated: the
  control), with a percentile bootstrap over *chunks of windows* (the unit of independent text);
* **emergence** = the first layer from which the lower bound of Q (or K) minus V stays above 0
  at every later layer; its **sensitivity** to the band factor is reported beside it.

>>> import massmech as mm
>>> model = mm.load_model("tiny-llama")
>>> em = emergence_from_windows(model, [[5 + i + j for i in range(32)] for j in range(8)], n_chunks=4, n_boot=50)
>>> sorted(em.summary)
['k', 'q']
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from massmech.core.capture import capture_stats
from massmech.core.models import LoadedModel
from massmech.core.qkvstats import QKVStats
from massmech.errors import AnalysisError, RopeError


@dataclass(frozen=True)
class Emergence:
    """Per-layer concentration with intervals and the emergence layer per Q/K site and band factor.

    Attributes:
        layers: One row per (factor, site, layer): ``concentration`` (point estimate over all
            chunks), ``minus_v`` (site minus V), ``minus_v_low``/``minus_v_high`` (bootstrap
            interval), ``band_pairs`` (pairs in the band), ``n_chunks``.
        summary: site -> factor -> emergence layer (``None``: Q/K never stay above V).
        params: The settings.

    >>> Emergence(pd.DataFrame(), {"q": {1.0: 0}, "k": {1.0: None}}, {"factors": [1.0], "n_chunks": 4})
    Emergence(layer at factor 1: {'q': 0, 'k': None}, factors=[1.0], n_chunks=4)
    """

    layers: pd.DataFrame
    summary: dict[str, dict[float, int | None]]
    params: dict

    def __repr__(self) -> str:
        main = {s: v.get(1.0) for s, v in self.summary.items()}
        return f"Emergence(layer at factor 1: {main}, factors={self.params['factors']}, n_chunks={self.params['n_chunks']})"

    @classmethod
    def from_layers(cls, layers: pd.DataFrame, params: dict | None = None) -> Emergence:
        """Rebuild from the per-layer table (e.g. an analyze run's ``emergence.parquet``): the
        emergence layers are re-derived from the stored intervals by the same rule.

        >>> rows = [dict(factor=1.0, site="q", layer=i, minus_v_low=lo) for i, lo in enumerate([-0.1, 0.2, 0.3])]
        >>> Emergence.from_layers(pd.DataFrame(rows)).summary
        {'q': {1.0: 1}}
        """
        summary: dict[str, dict[float, int | None]] = {}
        for (factor, site), g in layers.sort_values("layer").groupby(["factor", "site"], sort=False):
            summary.setdefault(site, {})[float(factor)] = _first_staying_above(g.minus_v_low.to_numpy(), g.layer.tolist())
        params = dict(params or {})
        params.setdefault("factors", sorted({float(f) for f in layers.factor}))
        params.setdefault("n_chunks", int(layers.n_chunks.iloc[0]) if "n_chunks" in layers and len(layers) else None)
        return cls(layers, summary, params)


def _first_staying_above(low: np.ndarray, layers: list[int]) -> int | None:
    """The first layer from which every later layer's lower bound is above 0 (``None``: never)."""
    above = low > 0
    stays = np.flip(np.logical_and.accumulate(np.flip(above)))
    return int(layers[int(np.argmax(stays))]) if stays.any() else None


def _pair_energy(stats: QKVStats, site: str) -> np.ndarray:
    """``[layer, head, pair]`` energy (sum of squares over tokens) of a site, pre-RoPE."""
    idx = stats.rope.pair_index()
    return stats.sumsq[(site, "pre")].double().numpy()[..., idx].sum(-1)


def emergence(
    chunks: Sequence[QKVStats],
    *,
    context_len: int,
    factors: Sequence[float] = (0.5, 1.0, 2.0),
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> Emergence:
    """Emergence from statistics captured on independent chunks of windows (see the module docstring).

    Args:
        chunks: One :class:`~massmech.core.qkvstats.QKVStats` per chunk, each with Q, K and V
            pre-RoPE, from the same model.
        context_len: The windows' length ``C``.
        factors: Band edges: pairs with wavelength > ``factor x C``.
        n_boot: Bootstrap resamples of the chunks.
        alpha: 1 - interval coverage.
        seed: Bootstrap seed.

    Returns:
        :class:`Emergence`.

    Raises:
        AnalysisError: Fewer than 2 chunks, or Q, K or V pre-RoPE missing.
        RopeError: The statistics come from a model without RoPE.

    >>> import torch
    >>> from massmech.core.activations import from_activations
    >>> from massmech.core.rope import RopeSpec
    >>> def chunk(seed):  # Q with its slowest pair (dims 3, 7) 4x larger than K and V
    ...     x = torch.randn(4, 16, 2, 8, generator=torch.Generator().manual_seed(seed))
    ...     return from_activations({"q": x * torch.tensor([1, 1, 1, 4.0] * 2), "k": x, "v": x},
    ...                             rope=RopeSpec.from_base(10_000, 8))
    >>> em = emergence([chunk(s) for s in range(4)], context_len=16, n_boot=200)
    >>> em.summary["q"], em.summary["k"][1.0]  # K equals V: never above it
    ({0.5: 0, 1.0: 0, 2.0: 0}, None)
    """
    if len(chunks) < 2:
        raise AnalysisError(f"emergence needs at least 2 chunks of windows to resample, got {len(chunks)}")
    first = chunks[0]
    if first.rope is None:
        raise RopeError(f"{first.model} has no RoPE: frequency bands are undefined")
    missing = [s for s in ("q", "k", "v") if (s, "pre") not in first.keys()]
    if missing:
        raise AnalysisError(f"emergence needs q, k and v pre-RoPE statistics; missing {missing}")
    spec, layers = first.rope, list(first.layers)
    # energy[c, layer, head, pair] per site; V grouped into the same pairs
    energy = {s: np.stack([_pair_energy(c, s) for c in chunks]) for s in ("q", "k", "v")}
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(chunks), size=(n_boot, len(chunks)))
    rows, summary = [], {"q": {}, "k": {}}
    for factor in factors:
        band = np.stack([spec.wavelengths(layer) > factor * context_len for layer in layers])  # [layer, pair]
        pair_share = band.mean(1)  # [layer]

        def concentration(e: np.ndarray, band: np.ndarray = band, pair_share: np.ndarray = pair_share) -> np.ndarray:
            """Mean over heads of (band energy share / band pair share): ``[..., layer]``."""
            total = e.sum(-1)
            share = (e * band[:, None, :]).sum(-1) / np.where(total > 0, total, np.nan)
            with np.errstate(invalid="ignore", divide="ignore"):
                return np.nanmean(share, -1) / np.where(pair_share > 0, pair_share, np.nan)

        conc = {s: concentration(e.sum(0)) for s, e in energy.items()}  # [layer]
        boot = {s: concentration(e[draws].sum(1)) for s, e in energy.items()}  # [n_boot, layer]
        for site in ("q", "k"):
            diff = boot[site] - boot["v"]
            lo, hi = np.nanquantile(diff, [alpha / 2, 1 - alpha / 2], axis=0)
            summary[site][float(factor)] = _first_staying_above(lo, layers)
            for i, layer in enumerate(layers):
                rows.append({"factor": float(factor), "site": site, "layer": layer,
                             "concentration": float(conc[site][i]), "v_concentration": float(conc["v"][i]),
                             "minus_v": float(conc[site][i] - conc["v"][i]), "minus_v_low": float(lo[i]),
                             "minus_v_high": float(hi[i]), "band_pairs": int(band[i].sum()), "n_chunks": len(chunks)})
    params = {"context_len": context_len, "factors": [float(f) for f in factors], "n_boot": n_boot, "alpha": alpha,
              "seed": seed, "n_chunks": len(chunks)}
    return Emergence(pd.DataFrame(rows), summary, params)


def emergence_from_windows(
    model: LoadedModel,
    windows: Sequence[Sequence[int]],
    *,
    n_chunks: int = 8,
    factors: Sequence[float] = (0.5, 1.0, 2.0),
    n_boot: int = 1000,
    seed: int = 0,
    batch_size: int = 4,
    progress: bool = False,
) -> Emergence:
    """Capture Q, K, V pre-RoPE on ``n_chunks`` consecutive chunks of ``windows``, then :func:`emergence`.

    The windows should have one length ``C`` (e.g. :func:`massmech.core.corpus.token_windows`);
    the capture costs the same as one :func:`~massmech.capture_stats` over all of them.

    >>> import massmech as mm
    >>> windows = [[5 + i + j for i in range(16)] for j in range(4)]
    >>> em = emergence_from_windows(mm.load_model("tiny-qwen2"), windows, n_chunks=2, n_boot=20)
    >>> em.params["context_len"], em.params["n_chunks"], sorted(em.layers.site.unique())
    (16, 2, ['k', 'q'])
    """
    if len(windows) < n_chunks or n_chunks < 2:
        raise AnalysisError(f"need at least n_chunks >= 2 windows, got {len(windows)} windows for {n_chunks} chunks")
    lengths = {len(w) for w in windows}
    if len(lengths) != 1:
        raise AnalysisError(f"the windows must share one length (the context C), got lengths {sorted(lengths)[:5]}")
    bounds = np.linspace(0, len(windows), n_chunks + 1).round().astype(int)
    chunks = [capture_stats(model, [list(w) for w in windows[a:b]], sites=("q", "k", "v"), stages=("pre",),
                            batch_size=batch_size, progress=progress) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    return emergence(chunks, context_len=lengths.pop(), factors=factors, n_boot=n_boot, seed=seed)
