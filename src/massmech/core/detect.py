"""Massive-value detection on captured statistics.

The paper's rule (Jin et al. 2025, eq. 2): dim ``d`` of head ``h`` is *massive* when its L2 norm
over tokens ``M[h, d]`` exceeds ``lam`` times the mean of ``M[h, :]`` over the head's dims
(``lam = 5``). Variants: the mean over the whole layer (all heads and dims) instead of the head
(``mean="layer"``), and the official code's rule, the ``k`` largest dims of each head
(``rule="topk"``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from jaxtyping import Bool, Float
from torch import Tensor

from massmech.core.qkvstats import QKVStats
from massmech.errors import AnalysisError

COLUMNS = [
    "site", "stage", "layer", "head", "dim", "pair", "frequency", "wavelength", "M", "ratio",
]


RULES = ("lambda", "topk")
MEANS = ("head", "layer")


def check_rule(rule: str = "lambda", *, lam: float = 5.0, k: int = 4, mean: str = "head", d_head: int | None = None) -> None:
    """Raise :class:`~massmech.errors.AnalysisError` if a massive rule's parameters are invalid.

    >>> check_rule("topk", k=2, d_head=64)  # valid: returns None
    >>> check_rule("topk", k=3, d_head=2)
    Traceback (most recent call last):
    ...
    massmech.errors.AnalysisError: k must be in [1, d_head=2], got 3
    """
    if rule not in RULES:
        raise AnalysisError(f"rule must be 'lambda' or 'topk', got {rule!r}")
    if mean not in MEANS:
        raise AnalysisError(f"mean must be 'head' or 'layer', got {mean!r}")
    if rule == "lambda" and not lam > 0:
        raise AnalysisError(f"lam must be > 0, got {lam}")
    if rule == "topk" and d_head is not None and not 1 <= k <= d_head:
        raise AnalysisError(f"k must be in [1, d_head={d_head}], got {k}")


def massive_reference(m: Float[Tensor, "*lead head d"], mean: str = "head") -> Float[Tensor, "*lead head d"]:
    """The mean ``M`` that the lambda rule and the ``ratio`` column compare against.

    ``"head"``: the mean over the head's dims (the paper); ``"layer"``: over every head and dim
    of the layer (the last two axes).

    >>> m = torch.tensor([[1.0, 3.0], [5.0, 7.0]])  # [head, d]
    >>> massive_reference(m).tolist(), massive_reference(m, "layer").tolist()
    ([[2.0, 2.0], [6.0, 6.0]], [[4.0, 4.0], [4.0, 4.0]])
    """
    ref = m.mean(-1, keepdim=True) if mean == "head" else m.mean((-2, -1), keepdim=True)
    return ref.expand_as(m)


def massive_mask(
    m: Float[Tensor, "*lead head d"], *, rule: str = "lambda", lam: float = 5.0, k: int = 4, mean: str = "head",
) -> Bool[Tensor, "*lead head d"]:
    """Which dims are massive: the one place the massive rule lives.

    Args:
        m: Per-dim magnitudes ``M`` (the L2 norm over tokens), heads on the second-last axis and
            dims on the last; any leading axes (layers, rows) are kept.
        rule: ``"lambda"``: ``M[h, d] > lam * mean`` (the paper); ``"topk"``: the ``k`` largest
            dims of each head (the official code's variant).
        lam: Threshold factor of the lambda rule (> 0).
        k: Dims per head of the top-k rule (``1 <= k <= d``).
        mean: Reference of the lambda rule, see :func:`massive_reference`.

    Returns:
        A boolean mask shaped like ``m``.

    >>> m = torch.tensor([[1.0, 1.0, 1.0, 20.0]])
    >>> massive_mask(m, lam=3).tolist()
    [[False, False, False, True]]
    >>> massive_mask(m, rule="topk", k=2).sum().item()
    2
    """
    check_rule(rule, lam=lam, k=k, mean=mean, d_head=m.shape[-1])
    if rule == "lambda":
        return m > lam * massive_reference(m, mean)
    top = m.topk(k, dim=-1).indices
    return torch.zeros_like(m, dtype=torch.bool).scatter_(-1, top, True)


def detect_massive(
    stats: QKVStats,
    *,
    rule: str = "lambda",
    lam: float = 5.0,
    k: int = 4,
    mean: str = "head",
    sites: Sequence[str] | None = None,
    stages: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Find massive dims in captured statistics.

    Args:
        stats: Output of :func:`massmech.capture_stats`.
        rule: ``"lambda"`` (``M > lam * mean``) or ``"topk"`` (``k`` largest dims per head).
        lam: Threshold factor of the lambda rule; must be > 0.
        k: Dims per head of the top-k rule; ``1 <= k <= d_head``.
        mean: Reference mean of the lambda rule and of the ``ratio`` column: per ``"head"``
            (the paper) or over the whole ``"layer"``.
        sites: Restrict to these sites (default: all captured).
        stages: Restrict to these stages (default: all captured).

    Returns:
        Tidy table, one row per massive (site, stage, layer, head, dim) with columns
        ``site, stage, layer, head, dim, pair, frequency, wavelength, M, ratio`` where ``pair``
        is the RoPE pair (-1: not rotated, V, or no RoPE), ``frequency`` in rad/token (NaN without
        RoPE), ``wavelength`` in tokens, and ``ratio = M / mean``.

    >>> from massmech.core.activations import from_activations
    >>> from massmech.core.rope import RopeSpec
    >>> q = torch.ones(1, 8, 2, 8)  # [batch, tokens, heads, d_head]
    >>> q[..., 7] = 30.0  # dim 7 of both heads: the slow half of pair 3
    >>> stats = from_activations({"q": q}, rope=RopeSpec.from_base(10_000, 8))
    >>> detect_massive(stats)[["site", "stage", "layer", "head", "dim", "pair", "ratio"]]
      site stage  layer  head  dim  pair     ratio
    0    q   pre      0     0    7     3  6.486486
    1    q   pre      0     1    7     3  6.486486
    >>> detect_massive(stats, rule="topk", k=1).dim.tolist()
    [7, 7]
    """
    check_rule(rule, lam=lam, k=k, mean=mean)
    keys = [
        key
        for key in stats.keys()
        if (sites is None or key[0] in sites) and (stages is None or key[1] in stages)
    ]
    if not keys:
        raise AnalysisError(f"no captured (site, stage) matches sites={sites}, stages={stages}: {stats.keys()}")
    rope = stats.rope
    dim_pair = rope.dim_to_pair() if rope is not None else None
    rows = []
    for site, stage in keys:
        m = stats.norm(site, stage).double()  # [layer, head, d_head]
        ref = massive_reference(m, mean)
        hit = massive_mask(m, rule=rule, lam=lam, k=k, mean=mean)
        li, hi, di = (t.numpy() for t in hit.nonzero(as_tuple=True))
        layer = np.asarray(stats.layers)[li]
        if rope is not None and site != "v":  # V is never rotated: no pair, no frequency
            pair = dim_pair[di]
            freq_table = np.stack([np.r_[rope.frequencies(layer_), np.nan] for layer_ in range(rope.n_layers)])
            frequency = freq_table[layer, np.where(pair >= 0, pair, rope.n_pairs)]
        else:
            pair = np.full(len(di), -1)
            frequency = np.full(len(di), np.nan)
        with np.errstate(divide="ignore"):
            wavelength = 2 * np.pi / frequency
        rows.append(
            pd.DataFrame(
                {
                    "site": site,
                    "stage": stage,
                    "layer": layer,
                    "head": hi,
                    "dim": di,
                    "pair": pair,
                    "frequency": frequency,
                    "wavelength": wavelength,
                    "M": m[li, hi, di].numpy(),
                    "ratio": (m / ref)[li, hi, di].numpy(),
                }
            )
        )
    out = pd.concat(rows, ignore_index=True)[COLUMNS]
    return out.sort_values(["site", "stage", "layer", "head", "dim"], ignore_index=True)

