"""Statistics from Q/K/V activations saved elsewhere (other frameworks, other models, cluster jobs).

:func:`from_activations` (also ``QKVStats.from_activations``) turns saved tensors into the same
:class:`~massmech.core.qkvstats.QKVStats` a model run gives, so detection, frequency analysis and
``massmech analyze --activations`` work on them. It checks the tensors against their declared
axes and the RoPE spec before it sums anything, and it streams: pass an iterable of chunks.

>>> import torch
>>> from massmech.core.rope import RopeSpec
>>> q = torch.randn(2, 10, 4, 16)  # [batch, tokens, heads, d_head]
>>> stats = from_activations({"q": q, "k": q[:, :, :2]}, axes="bthd", rope=RopeSpec.from_base(10_000, 16), layers=[9])
>>> stats.layers, stats.n_tokens, tuple(stats.norm("q").shape)
((9,), 20, (1, 4, 16))
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from massmech.core.rope import RopeSpec
from massmech.errors import CaptureError

AXES = ("thd", "bthd", "bhtd")
_SITES = ("q", "k", "v")


def _load(x: Any) -> Tensor:
    """A tensor from a tensor, an array or a path (.safetensors: its only tensor, .pt weights-only, .npy)."""
    if isinstance(x, Tensor):
        return x
    if isinstance(x, np.ndarray):
        return torch.from_numpy(x)
    if isinstance(x, (str, os.PathLike)):
        path = Path(x)
        if not path.is_file():
            raise CaptureError(f"no activation file {path}")
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            tensors = load_file(path)
            if len(tensors) != 1:
                raise CaptureError(f"{path} holds {len(tensors)} tensors ({sorted(tensors)[:5]}); save one per file")
            return next(iter(tensors.values()))
        if path.suffix in (".pt", ".pth"):
            t = torch.load(path, map_location="cpu", weights_only=True)  # never unpickles code
            if not isinstance(t, Tensor):
                raise CaptureError(f"{path} holds a {type(t).__name__}, not a tensor")
            return t
        if path.suffix == ".npy":
            return torch.from_numpy(np.load(path, allow_pickle=False))
        raise CaptureError(f"{path}: activation files must be .safetensors, .pt or .npy")
    raise CaptureError(f"activations must be tensors, arrays or file paths, got {type(x).__name__}")


def _as_bthd(x: Tensor, axes: str, site: str, layer: Any) -> Tensor:
    """``x`` as ``[batch, tokens, heads, d_head]`` float64, checked against ``axes``."""
    if axes not in AXES:
        raise CaptureError(f"axes must be one of {AXES} (t: tokens, h: heads, d: head dim, b: batch), got {axes!r}")
    if x.dim() != len(axes):
        raise CaptureError(
            f"{site} (layer {layer}) has {x.dim()} axes {tuple(x.shape)}, but axes={axes!r} declares {len(axes)}"
        )
    x = x.double()
    if axes == "thd":
        x = x[None]
    elif axes == "bhtd":
        x = x.transpose(1, 2)
    return x


def _check(shapes: dict, rope: RopeSpec | None, n_heads: Mapping[str, int] | None, axes: str) -> None:
    """Every site: d_head of the spec; one (batch, tokens) for all sites; heads as declared."""
    bt = {}
    for (site, layer), (b, t, h, d) in shapes.items():
        if rope is not None and d != rope.d_head:
            raise CaptureError(
                f"{site} (layer {layer}) has head dim {d} on its last axis, the RoPE spec d_head={rope.d_head}: "
                f"wrong axes (declared {axes!r}) or the wrong spec"
            )
        if n_heads and site in n_heads and h != n_heads[site]:
            raise CaptureError(
                f"{site} (layer {layer}) has {h} heads on its {'h'!r} axis, expected {n_heads[site]}: "
                f"are the axes {axes!r} right (a [heads, tokens, d] tensor read as [tokens, heads, d]?)"
            )
        bt.setdefault((b, t), []).append(f"{site}@{layer}")
    if len(bt) > 1:
        raise CaptureError(
            "the sites disagree on (batch, tokens): "
            + "; ".join(f"{v[:3]} have {k}" for k, v in bt.items())
            + f" -- check the axes ({axes!r}); heads and tokens swapped show up here"
        )


def from_activations(
    activations: Mapping[str, Any] | Iterable[Mapping[str, Any]],
    *,
    axes: str = "bthd",
    stage: str = "pre",
    layers: Sequence[Any] | None = None,
    rope: RopeSpec | None = None,
    mask: Any = None,
    n_heads: Mapping[str, int] | None = None,
    model: str = "activations",
) -> Any:
    """:class:`~massmech.core.qkvstats.QKVStats` from saved Q/K/V activations.

    Args:
        activations: ``{"q": x, "k": x, "v": x}`` (any subset), each one tensor (one layer) or a
            list of tensors (one per entry of ``layers``); a tensor may be a torch tensor, a numpy
            array or a ``.safetensors``/``.pt``/``.npy`` path. Or an iterable of such dicts:
            chunks of one run, summed as they come (stream many files without holding them).
        axes: ``"thd"`` (tokens, heads, d_head), ``"bthd"`` or ``"bhtd"``.
        stage: ``"pre"`` or ``"post"`` RoPE (V: ``"pre"``).
        layers: Labels of the layers, in order (any integers, e.g. ``[10]``); default ``0..n-1``.
        rope: The model's spec (e.g. :meth:`RopeSpec.from_base`); a one-layer spec serves every
            label. ``None``: no frequency analysis (detection still works).
        mask: ``[batch, tokens]`` (or ``[tokens]``) booleans: the real tokens (padding left out).
        n_heads: Expected heads per site (e.g. ``{"q": 32, "k": 8, "v": 8}``): catches swapped axes.
        model: A name for the statistics.

    Raises:
        CaptureError: An axis count that does not match ``axes``, a last axis that is not
            ``d_head``, sites that disagree on batch and tokens, heads other than ``n_heads``, a
            mask of another shape, unreadable files.

    >>> chunks = ({"k": torch.ones(1, 3, 2, 8)} for _ in range(2))  # streamed: two chunks of one run
    >>> stats = from_activations(chunks, mask=[True, True, False])  # the last token is padding
    >>> stats.n_tokens, stats.n_sequences, stats.keys()
    (4, 2, [('k', 'pre')])
    """
    from massmech.core.qkvstats import QKVStats

    if stage not in ("pre", "post"):
        raise CaptureError(f"stage must be 'pre' or 'post', got {stage!r}")
    chunks = [activations] if isinstance(activations, Mapping) else activations
    sums: dict = {}
    labels: list | None = None
    n_tokens = n_sequences = max_len = 0
    for chunk in chunks:
        unknown = set(chunk) - set(_SITES)
        if unknown or not chunk:
            raise CaptureError(f"activations are keyed by 'q', 'k', 'v'; got {sorted(chunk)}")
        per_site = {s: (list(v) if isinstance(v, (list, tuple)) else [v]) for s, v in chunk.items()}
        n_layers = {len(v) for v in per_site.values()}
        if len(n_layers) != 1:
            raise CaptureError(f"every site needs the same number of layers, got {({s: len(v) for s, v in per_site.items()})}")
        labels_here = list(layers) if layers is not None else list(range(n_layers.pop()))
        if len(labels_here) != len(next(iter(per_site.values()))):
            raise CaptureError(f"layers={list(layers)} labels {len(labels_here)} layers; the tensors hold "
                               f"{len(next(iter(per_site.values())))}")
        if labels is not None and labels_here != labels:
            raise CaptureError(f"the chunks disagree on their layers: {labels} then {labels_here}")
        labels = labels or labels_here
        xs = {(s, lab): _as_bthd(_load(t), axes, s, lab) for s, ts in per_site.items() for lab, t in zip(labels_here, ts, strict=True)}
        _check({k: tuple(x.shape) for k, x in xs.items()}, rope, n_heads, axes)
        b, t = next(iter(xs.values())).shape[:2]
        m = torch.ones(b, t, dtype=torch.bool) if mask is None else torch.as_tensor(np.asarray(mask)).bool()
        if m.dim() == 1:
            m = m[None]
        if tuple(m.shape) != (b, t):
            raise CaptureError(f"mask has shape {tuple(m.shape)}, the activations (batch, tokens) = {(b, t)}")
        for (site, lab), x in xs.items():
            key = (site, "pre" if site == "v" else stage)
            sel = x[m]  # [tokens, heads, d]
            acc = sums.setdefault(key, {})
            if lab not in acc:
                acc[lab] = [torch.zeros(sel.shape[1:], dtype=torch.float64) for _ in range(2)] + [
                    torch.zeros(sel.shape[1:], dtype=torch.float64)]
            acc[lab][0] += (sel * sel).sum(0)
            acc[lab][1] += sel.sum(0)
            torch.maximum(acc[lab][2], sel.abs().amax(0) if len(sel) else acc[lab][2], out=acc[lab][2])
        n_tokens += int(m.sum())
        n_sequences += b
        max_len = max(max_len, t)
    if labels is None:
        raise CaptureError("no activations: the iterable of chunks was empty")
    stack = {k: [torch.stack([v[lab][i] for lab in labels]) for i in range(3)] for k, v in sums.items()}
    if rope is not None and rope.n_layers == 1 and max(labels) >= 1:  # one spec for every label
        rope = RopeSpec(d_head=rope.d_head, rotary_dim=rope.rotary_dim, layout=rope.layout,
                        inv_freq=rope.inv_freq * (max(labels) + 1), scaling=rope.scaling * (max(labels) + 1))
    return QKVStats(
        model=model, layers=tuple(int(x) for x in labels), n_tokens=n_tokens, n_sequences=n_sequences,
        sumsq={k: v[0] for k, v in stack.items()}, total={k: v[1] for k, v in stack.items()},
        max_abs={k: v[2] for k, v in stack.items()}, rope=rope,
        meta={"source": "activations", "axes": axes, "max_len": max_len, "sites": sorted({k[0] for k in stack})},
    )
