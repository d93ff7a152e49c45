"""Attention logits attributed to RoPE pairs.

After RoPE, a head's attention logit (before the mask and the softmax) is a sum over dims, and
so over the pairs RoPE rotates together::

    logit(i, j) = scale * sum_p (q_i[p] . k_j[p])  (+ scale * q_i[u] . k_j[u], the unrotated dims)

where ``q_i[p]`` is the 2-vector of pair ``p`` of the rotated query at position ``i``. Each
term depends on the positions only through ``i - j`` and turns at the pair's frequency, so
splitting the logit by pair (or by band: :func:`group_logits`) tells which part of the RoPE
spectrum decides where a head attends: e.g. whether the pairs beyond the critical pair
(:mod:`massmech.core.critical`), where massive values sit, carry the logit.

:func:`pair_logits` works on any rotated Q/K; :func:`attribute_logits` captures them from a
model (``hook_rot_q``/``hook_rot_k``), uses the scale the model's attention applies (read from
the model, e.g. Gemma's ``query_pre_attn_scalar ** -0.5``), and checks that the pairs sum to the
model's own ``hook_attn_scores``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from massmech.core.bridge import attention_scaling
from massmech.core.models import LoadedModel
from massmech.core.rope import RopeSpec
from massmech.core.sites import to_heads
from massmech.errors import AnalysisError, IndexRangeError, InputTypeError

UNROTATED = "unrotated"


@dataclass(frozen=True, repr=False)
class PairLogits:
    """Per-pair contributions to one layer's attention logits (output of :func:`pair_logits`).

    Attributes:
        contributions: fp32 ``[*batch, head, q_pos, k_pos, part]``: ``part < n_pairs`` is RoPE
            pair ``part``; with partial rotary a last part holds the unrotated dims. Already
            multiplied by ``scale``; no mask, no softcap.
        layer: The layer.
        scale: The factor the attention multiplies ``q . k`` by.
        n_pairs: RoPE pairs per head.
        softcap: The attention's logit softcap (Gemma 2), applied by :meth:`scores`; else ``None``.
        max_error: Where checked against the model (:func:`attribute_logits`), the largest
            absolute difference of :meth:`scores` to ``hook_attn_scores`` on unmasked entries.

    >>> q, k = torch.ones(3, 2, 4), torch.ones(3, 1, 4)  # 3 positions, 2 query heads share 1 kv head
    >>> pl = pair_logits(q, k, RopeSpec.from_base(100, 4), 0, scale=0.5)
    >>> pl
    PairLogits(layer=0, shape=(2, 3, 3), parts=2, pairs=2, unrotated=no, scale=0.5)
    >>> pl.total()[0, 0].tolist(), pl.scores().shape == pl.total().shape
    ([2.0, 2.0, 2.0], True)
    """

    contributions: Tensor
    layer: int
    scale: float
    n_pairs: int
    softcap: float | None = None
    max_error: float | None = None

    def __repr__(self) -> str:
        shape = tuple(self.contributions.shape)
        err = "" if self.max_error is None else f", max_error={self.max_error:.1e}"
        cap = "" if self.softcap is None else f", softcap={self.softcap:g}"
        return (
            f"PairLogits(layer={self.layer}, shape={shape[:-1]}, parts={shape[-1]}, pairs={self.n_pairs}, "
            f"unrotated={'yes' if self.has_unrotated else 'no'}, scale={self.scale:g}{cap}{err})"
        )

    @property
    def has_unrotated(self) -> bool:
        """Whether the last part is the unrotated dims (partial rotary).

        >>> pair_logits(torch.ones(2, 1, 8), torch.ones(2, 1, 8), RopeSpec.from_base(100, 8, rotary_dim=4), 0, scale=1.0).has_unrotated
        True
        """
        return self.contributions.shape[-1] == self.n_pairs + 1

    def total(self) -> Float[Tensor, "*batch head q_pos k_pos"]:
        """The logits: the sum over every part (before softcap and mask).

        >>> pair_logits(torch.ones(2, 1, 4), torch.ones(2, 1, 4), RopeSpec.from_base(100, 4), 0, scale=0.5).total().tolist()
        [[[2.0, 2.0], [2.0, 2.0]]]
        """
        return self.contributions.sum(-1)

    def scores(self) -> Float[Tensor, "*batch head q_pos k_pos"]:
        """The logits as the attention computes them before its mask: :meth:`total`, softcapped if it is.

        >>> pl = pair_logits(torch.ones(2, 1, 4), torch.ones(2, 1, 4), RopeSpec.from_base(100, 4), 0, scale=5.0)
        >>> import math
        >>> capped = dataclasses.replace(pl, softcap=10.0).scores()[0, 0, 0].item()  # softcap * tanh(total / softcap)
        >>> round(capped, 4), round(10 * math.tanh(20 / 10), 4)
        (9.6403, 9.6403)
        """
        total = self.total()
        return total if self.softcap is None else self.softcap * torch.tanh(total / self.softcap)


def pair_logits(
    q_rot: Float[Tensor, "*batch q_pos head d_head"],
    k_rot: Float[Tensor, "*batch k_pos kv_head d_head"],
    spec: RopeSpec,
    layer: int,
    *,
    scale: float,
    softcap: float | None = None,
) -> PairLogits:
    """Split the attention logits of rotated queries and keys by RoPE pair, in fp32.

    Memory is ``batch * head * q_pos * k_pos * (n_pairs + 1)`` floats: keep sequences short or
    slice positions.

    Args:
        q_rot: Queries after RoPE, ``[*batch, q_pos, head, d_head]``.
        k_rot: Keys after RoPE, ``[*batch, k_pos, kv_head, d_head]``; with grouped-query
            attention each kv head serves ``head // kv_head`` consecutive query heads.
        spec: The model's RoPE (the pair layout, partial rotary).
        layer: The layer (checked against ``spec``).
        scale: The factor the attention multiplies ``q . k`` by: read it from the model
            (:func:`massmech.core.bridge.attention_scaling`), it is not always ``d_head ** -0.5``.
        softcap: The attention's logit softcap, if any (kept for :meth:`PairLogits.scores`).

    Raises:
        InputTypeError: Shapes do not match the spec or each other.

    >>> spec = RopeSpec.from_base(100, 4, layout="adjacent")  # pairs (0, 1) and (2, 3)
    >>> q = torch.tensor([[[1.0, 1.0, 2.0, 0.0]]])  # [pos 1, head 1, d_head 4]
    >>> pair_logits(q, q, spec, 0, scale=1.0).contributions[0, 0, 0].tolist()  # [head, q, k, pair]
    [2.0, 4.0]
    """
    spec._check_layer(layer)
    q, k = _fp32_heads(q_rot, k_rot, spec)
    idx = spec.pair_index().to(q.device)
    parts = torch.einsum("...qhpc,...khpc->...hqkp", q[..., idx], k[..., idx])
    if spec.rotary_dim < spec.d_head:
        rest = torch.einsum("...qhd,...khd->...hqk", q[..., spec.rotary_dim:], k[..., spec.rotary_dim:])
        parts = torch.cat([parts, rest[..., None]], dim=-1)
    return PairLogits(parts * scale, layer=layer, scale=float(scale), n_pairs=spec.n_pairs, softcap=softcap)


def _fp32_heads(q_rot: Tensor, k_rot: Tensor, spec: RopeSpec) -> tuple[Tensor, Tensor]:
    """Q and K in fp32, K's heads repeated to Q's (grouped-query attention), shapes checked."""
    q, k = q_rot.float(), k_rot.float()
    if q.shape[-1] != spec.d_head or k.shape[-1] != spec.d_head:
        raise InputTypeError(f"q/k have d_head {q.shape[-1]}/{k.shape[-1]}, the RoPE spec {spec.d_head}")
    if q.shape[-2] % k.shape[-2]:
        raise InputTypeError(f"{q.shape[-2]} query heads cannot share {k.shape[-2]} kv heads evenly")
    return q, k.repeat_interleave(q.shape[-2] // k.shape[-2], dim=-2)


def _assignment(groups: Mapping[str, np.ndarray | Sequence[int] | Tensor] | np.ndarray, n_pairs: int) -> list[str]:
    """The group name of every pair (``"other"`` for pairs in no group)."""
    if isinstance(groups, np.ndarray):
        if groups.shape != (n_pairs,):
            raise AnalysisError(f"a label per pair needs shape ({n_pairs},), got {groups.shape}")
        return [str(g) for g in groups]
    names: list[str | None] = [None] * n_pairs
    for name, sel in groups.items():
        sel = np.asarray(sel.cpu() if isinstance(sel, Tensor) else sel)
        if sel.dtype == bool:
            if sel.shape != (n_pairs,):
                raise AnalysisError(f"group {name!r}: a mask needs shape ({n_pairs},), got {sel.shape}")
            sel = np.flatnonzero(sel)
        for p in sel.astype(int).tolist():
            if not 0 <= p < n_pairs:
                raise IndexRangeError(f"group {name!r}: pair {p} out of range [0, {n_pairs})")
            if names[p] is not None:
                raise AnalysisError(f"pair {p} is in groups {names[p]!r} and {name!r}: groups must not overlap")
            names[p] = name
    return [n if n is not None else "other" for n in names]


def group_logits(
    pl: PairLogits, groups: Mapping[str, np.ndarray | Sequence[int] | Tensor] | np.ndarray
) -> dict[str, Float[Tensor, "*batch head q_pos k_pos"]]:
    """Sum the pair contributions into named groups (bands, massive vs the rest ...).

    Args:
        pl: Per-pair contributions.
        groups: Either a label per pair (e.g. :func:`~massmech.core.frequency.context_bands`),
            or ``name -> pairs`` (a boolean mask over pairs or pair indices; groups must not
            overlap, e.g. :meth:`~massmech.core.critical.BandPrediction.groups`).

    Returns:
        ``name -> logits`` in order of first appearance; pairs in no group go to ``"other"``,
        the unrotated dims (partial rotary) to ``"unrotated"``. The groups sum to
        :meth:`PairLogits.total`.

    >>> from massmech.core.frequency import context_bands
    >>> spec = RopeSpec.from_base(10_000, 8, rotary_dim=6)  # 3 pairs and 2 unrotated dims
    >>> pl = pair_logits(torch.ones(2, 1, 8), torch.ones(2, 1, 8), spec, 0, scale=1.0)
    >>> {k: v[0, 0, 0].item() for k, v in group_logits(pl, context_bands(spec, 0, 200)).items()}
    {'high': 2.0, 'mid': 2.0, 'low': 2.0, 'unrotated': 2.0}
    >>> {k: v[0, 0, 0].item() for k, v in group_logits(pl, {"fast": [0]}).items()}
    {'fast': 2.0, 'other': 4.0, 'unrotated': 2.0}
    """
    names = _assignment(groups, pl.n_pairs)
    out = {}
    for name in dict.fromkeys(names):
        idx = torch.tensor([p for p, n in enumerate(names) if n == name], device=pl.contributions.device)
        out[name] = pl.contributions.index_select(-1, idx).sum(-1)
    if pl.has_unrotated:
        out[UNROTATED] = out.get(UNROTATED, 0) + pl.contributions[..., -1]
    return out


def band_logits(
    q_rot: Float[Tensor, "*batch q_pos head d_head"],
    k_rot: Float[Tensor, "*batch k_pos kv_head d_head"],
    spec: RopeSpec,
    layer: int,
    bands: np.ndarray,
    *,
    scale: float,
) -> dict[str, Float[Tensor, "*batch head q_pos k_pos"]]:
    """``group_logits(pair_logits(...), bands)`` as one matmul per band, without the per-pair tensor.

    Memory is ``batch * head * q_pos * k_pos`` floats per band instead of that times the pairs: for
    long sequences or many pairs. The unrotated dims of a partial rotary head are ``"unrotated"``.

    >>> spec = RopeSpec.from_base(10_000, 8, rotary_dim=6)
    >>> q, k = torch.randn(5, 2, 8), torch.randn(5, 1, 8)
    >>> bands = np.array(["high", "mid", "low"])
    >>> fast, slow = band_logits(q, k, spec, 0, bands, scale=0.5), group_logits(pair_logits(q, k, spec, 0, scale=0.5), bands)
    >>> list(fast) == list(slow), all(torch.allclose(fast[b], slow[b], atol=1e-6) for b in fast)
    (True, True)
    """
    spec._check_layer(layer)
    names = _assignment(bands, spec.n_pairs)
    q, k = _fp32_heads(q_rot, k_rot, spec)
    idx = spec.pair_index()
    groups = {name: idx[[p for p, n in enumerate(names) if n == name]].flatten() for name in dict.fromkeys(names)}
    if spec.rotary_dim < spec.d_head:
        groups[UNROTATED] = torch.arange(spec.rotary_dim, spec.d_head)
    return {name: torch.einsum("...qhd,...khd->...hqk", q[..., d], k[..., d]) * scale for name, d in groups.items()}


def attribute_logits(
    model: LoadedModel,
    tokens: Int[Tensor, "batch pos"],
    layers: Iterable[int] | None = None,
    *,
    attention_mask: Int[Tensor, "batch pos"] | None = None,
    check: bool = True,
) -> dict[int, PairLogits]:
    """Per-pair attention logits of a model on some tokens, layer by layer (fp32, on the CPU).

    One forward pass captures ``hook_rot_q``/``hook_rot_k`` (and ``hook_attn_scores`` to check);
    the scale and softcap are those the model's attention applies.

    Args:
        model: A RoPE model whose bridge fires ``hook_rot_q``/``hook_rot_k``.
        tokens: Token ids (keep them short: see :func:`pair_logits` for memory).
        layers: Layers to attribute; default all.
        attention_mask: 1 for real tokens, 0 for padding.
        check: Compare the pairs' sum with the model's ``hook_attn_scores`` on unmasked entries
            and raise when they differ (the error is kept as ``max_error``).

    Raises:
        RopeError: The model has no RoPE.
        ConfigError: The bridge exposes no post-RoPE Q/K.
        AnalysisError: ``check`` found the pairs do not sum to the model's logits (e.g. a
            QK-norm after RoPE).

    >>> import massmech as mm
    >>> model = mm.load_model("tiny-gemma3")
    >>> out = attribute_logits(model, torch.tensor(model.tokenize("hello")), layers=[2])
    >>> out[2].scale, out[2].max_error < 1e-5, tuple(out[2].contributions.shape)
    (0.0625, True, (1, 4, 6, 6, 8))
    """
    spec = model.rope
    layers = range(model.info.n_layers) if layers is None else list(layers)
    hooks = _hooks(model, layers, check)
    device = next(model.bridge.parameters()).device
    mask = None if attention_mask is None else attention_mask.to(device)
    acts = model.run_hooks(tokens.to(device), hooks, mask)
    out = {}
    for layer in layers:
        q = to_heads(acts[("q", layer)], False, model.info.n_heads)
        k = to_heads(acts[("k", layer)], False, model.info.n_kv_heads)
        scale, softcap = attention_scaling(model.bridge, layer)
        pl = pair_logits(q, k, spec, layer, scale=scale, softcap=softcap)
        if check:
            pl = dataclasses.replace(pl, max_error=_check(pl, acts[("s", layer)], model.info.name))
        out[layer] = dataclasses.replace(pl, contributions=pl.contributions.cpu())
    return out


def _hooks(model: LoadedModel, layers: Iterable[int], scores: bool) -> dict[tuple[str, int], str]:
    """The post-RoPE Q and K hooks of each layer (and its ``hook_attn_scores`` to check against)."""
    hooks = {}
    for layer in layers:
        hooks[("q", layer)] = model.hook_name("q", "post", layer)[0]
        hooks[("k", layer)] = model.hook_name("k", "post", layer)[0]
        if scores:
            hooks[("s", layer)] = f"blocks.{layer}.attn.hook_attn_scores"
    return hooks


def _check(pl: PairLogits, scores: Tensor, name: str) -> float:
    """Largest difference of the pairs' sum to the model's scores on unmasked entries; raise if too large."""
    unmasked = scores > torch.finfo(scores.dtype).min / 2  # masked entries hold the dtype's min or -inf
    if not unmasked.any():
        return 0.0
    ref = scores.float()[unmasked]
    err = float((pl.scores()[unmasked] - ref).abs().max())
    tol = 1e-4 + 8 * torch.finfo(scores.dtype).eps * float(ref.abs().max())
    if err > tol:
        raise AnalysisError(
            f"{name} layer {pl.layer}: the RoPE pairs sum to logits {err:.3g} away from hook_attn_scores "
            f"(tolerance {tol:.3g}): the post-RoPE Q/K are not what this attention multiplies"
        )
    return err


def query_logits(
    model: LoadedModel, tokens: Int[Tensor, "1 pos"], query: int, layers: Iterable[int] | None = None, *,
    keep: dict[int, tuple[Tensor, Tensor]] | None = None,
) -> dict[int, PairLogits]:
    """Per-pair attention logits of one query position against every key up to it, layer by layer.

    What :func:`attribute_logits` gives for one row of the logits, at a fraction of its memory
    (``head * (query + 1) * (n_pairs + 1)`` floats per layer), checked the same way against the
    model's ``hook_attn_scores``. ``contributions`` is ``[1, head, 1, query + 1, part]``. A dict
    passed as ``keep`` receives each layer's post-RoPE Q and K of the whole sequence (CPU,
    ``[pos, head, d_head]``), captured by the same forward pass.

    >>> import massmech as mm
    >>> model = mm.load_model("tiny-llama")
    >>> ids = torch.tensor(model.tokenize("hello world"))
    >>> one, full = query_logits(model, ids, 5, layers=[1])[1], attribute_logits(model, ids, layers=[1])[1]
    >>> torch.allclose(one.contributions[0, :, 0], full.contributions[0, :, 5, :6], atol=1e-6), one.max_error < 1e-5
    (True, True)
    >>> qk = {}
    >>> _ = query_logits(model, ids, 5, layers=[0], keep=qk)
    >>> [tuple(t.shape) for t in qk[0]]  # Q and K of every position, from the same pass
    [(12, 4, 16), (12, 2, 16)]
    """
    if tokens.dim() != 2 or tokens.shape[0] != 1:
        raise InputTypeError(f"query_logits takes one sequence [1, pos], got {tuple(tokens.shape)}")
    if not 0 <= query < tokens.shape[1]:
        raise IndexRangeError(f"query position {query} is outside the {tokens.shape[1]} tokens")
    spec = model.rope
    layers = range(model.info.n_layers) if layers is None else list(layers)
    acts = model.run_hooks(tokens.to(model.device), _hooks(model, layers, True), None)
    out = {}
    for layer in layers:
        q_all = to_heads(acts[("q", layer)], False, model.info.n_heads)
        k_all = to_heads(acts[("k", layer)], False, model.info.n_kv_heads)
        if keep is not None:
            keep[layer] = (q_all[0].float().cpu(), k_all[0].float().cpu())
        scale, softcap = attention_scaling(model.bridge, layer)
        pl = pair_logits(q_all[:, query : query + 1], k_all[:, : query + 1], spec, layer, scale=scale, softcap=softcap)
        scores = acts[("s", layer)][:, :, query : query + 1, : query + 1]  # [1, head, 1, keys]
        pl = dataclasses.replace(pl, max_error=_check(pl, scores, model.info.name))
        out[layer] = dataclasses.replace(pl, contributions=pl.contributions.cpu())
    return out
