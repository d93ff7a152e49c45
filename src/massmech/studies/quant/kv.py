"""Activation and KV-cache fake quantization.

:func:`quantize_activations` adds the activation half of naive W8A8: the input of every edited
layer is fake-quantized with one dynamic int8 scale per sequence (blind to outlier channels),
taken from the sequence's real tokens only.

KV-cache quantization acts on the cached site, post-RoPE K and V (:func:`fake_quant_kv`): asymmetric
min-max quantization per token (over each head's dims) or per channel (over the tokens,
KIVI-style), and a massive-aware variant that keeps chosen K dims in full precision and
quantizes the rest. :func:`kv_hooks` applies it to every position in one forward pass (K/V as
the later layers' queries would read them back); :func:`quantize_cache` applies it to a
generation's cache after the prefill, which is what transformers' ``QuantizedCache`` does.
"""

from __future__ import annotations

from typing import Any

import torch
from jaxtyping import Bool, Float
from torch import Tensor, nn

from massmech.causal.batch import current_masks
from massmech.core import decoder
from massmech.core.models import LoadedModel
from massmech.core.sites import from_heads, to_heads
from massmech.errors import QuantError
from massmech.studies.quant.config import KV_BITS

KV_AXES = ("token", "channel")


def fake_quant_per_sequence(
    x: Float[Tensor, "batch ..."], bits: int = 8, real: Bool[Tensor, "batch pos"] | None = None
) -> Float[Tensor, "batch ..."]:
    """Symmetric dynamic fake-quant with one scale per sequence: ``max|x| / (2**(bits-1) - 1)`` over
    the row's real tokens (``real``; default every position), so that a row's result depends on
    neither its batch-mates nor its padding.

    >>> x = torch.tensor([[[1.0, -0.5]], [[100.0, 3.0]]])  # two rows of one token
    >>> fake_quant_per_sequence(x, 8)[0].tolist()  # not rounded on row 1's scale
    [[1.0, -0.5039370059967041]]
    """
    qmax = 2 ** (bits - 1) - 1
    a = x.detach().abs().float()
    if real is not None:
        a = a * real.view(*real.shape, *([1] * (x.dim() - 2))).to(a.device)
    scale = a.flatten(1).amax(1).view(-1, *([1] * (x.dim() - 1))) / qmax  # [batch, 1, ...]
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    out = torch.clamp(torch.round(x.float() / safe), -qmax, qmax) * safe
    return torch.where(scale > 0, out, x.float()).to(x.dtype)


def quantize_activations(model: LoadedModel | nn.Module, bits: int = 8) -> list[Any]:
    """Fake-quantize the input of every decoder linear layer dynamically, one int8 scale per
    sequence from its real tokens (:func:`fake_quant_per_sequence`, padding masked through
    :func:`massmech.causal.batch.current_masks`): the outlier-blind activation half of naive W8A8.

    Returns:
        The hook handles (``handle.remove()`` undoes it).
    """
    if bits != 8:
        raise QuantError(f"activation quantization supports 8 bits, got {bits}")

    def pre_hook(module: nn.Module, args: tuple) -> tuple:
        x = args[0]
        masks = current_masks()
        real = None if masks is None or x.dim() != 3 else masks.at("full", x.shape[0], x.shape[1])
        return (fake_quant_per_sequence(x, bits, real), *args[1:])

    layers = decoder.linears(model)
    return [mod.register_forward_pre_hook(pre_hook) for mod in layers.values()]


# --------------------------------------------------------------------------- KV cache
def fake_quant_kv(
    x: Float[Tensor, "batch pos head d_head"],
    bits: int,
    axis: str,
    keep: Bool[Tensor, "head d_head"] | None = None,
    ranges: Bool[Tensor, "batch pos"] | None = None,
) -> Float[Tensor, "batch pos head d_head"]:
    """Asymmetric min-max fake-quant of cached keys or values (KIVI's, and quanto's, form).

    Args:
        x: Post-RoPE K or V, ``[batch, pos, head, d_head]``.
        bits: 2, 4 or 8.
        axis: ``"token"``: one scale and offset per (token, head) over its dims;
            ``"channel"``: one per (head, dim) over the tokens (KIVI's keys).
        keep: Dims kept in full precision (massive-aware): returned bit-exact and left out of the
            min/max of the rest.
        ranges: ``axis="channel"`` only: the positions whose values set each channel's min/max
            (the row's prompt tokens; default every position). Padding and a scored answer
            must not widen the ranges the prompt is stored with.

    Returns:
        ``lo + s * clamp(round((x - lo) / s), 0, 2**bits - 1)`` with ``s = (hi - lo) / (2**bits - 1)``,
        ``lo``/``hi`` the min/max of each group; kept dims unchanged.
    """
    if bits not in KV_BITS:
        raise QuantError(f"KV-cache quantization supports bits {KV_BITS}, got {bits}")
    if axis not in KV_AXES:
        raise QuantError(f"axis must be one of {KV_AXES}, got {axis!r}")
    xf = x.float()
    dims = (-1,) if axis == "token" else (1,)  # reduce over d_head, or over positions
    out_of_range = torch.zeros(1, 1, 1, 1, dtype=torch.bool, device=x.device)
    if keep is not None:
        out_of_range = out_of_range | keep.to(x.device)[None, None]  # [1, 1, head, d]
    if ranges is not None and axis == "channel":
        out_of_range = out_of_range | ~ranges.to(x.device)[:, :, None, None]  # [b, pos, 1, 1]
    lo = xf.masked_fill(out_of_range, float("inf")).amin(dims, keepdim=True)
    hi = xf.masked_fill(out_of_range, float("-inf")).amax(dims, keepdim=True)
    lo, hi = torch.nan_to_num(lo, posinf=0.0), torch.nan_to_num(hi, neginf=0.0)  # all kept
    levels = 2**bits - 1
    scale = (hi - lo) / levels
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.clamp(torch.round((xf - lo) / safe), 0, levels)
    out = torch.where(scale > 0, lo + q * safe, xf)  # a constant group is exact
    if keep is not None:
        out = torch.where(keep.to(x.device)[None, None], xf, out)
    return out.to(x.dtype)


def quantize_cache(
    cache: Any,
    bits: int,
    *,
    key_axis: str = "channel",
    value_axis: str = "token",
    keep_k: Bool[Tensor, "layer head d_head"] | None = None,
) -> None:
    """Fake-quantize, in place, the keys and values held by a transformers ``DynamicCache``.

    Called after the prefill, this is what ``QuantizedCache`` does to the prompt: the prefill
    itself attends to exact K/V, and every later step reads the quantized prompt cache (plus the
    exact states of the new tokens). ``tests/studies/test_quantize.py`` checks generations against
    ``QuantizedCache(backend="quanto")``.

    Args:
        cache: A ``DynamicCache`` after the prefill (layers hold ``[batch, head, pos, d_head]``).
        bits, key_axis, value_axis, keep_k: As :func:`kv_hooks`.
    """
    layers = cache.layers
    if keep_k is not None and len(keep_k) != len(layers):
        raise QuantError(f"keep_k has {len(keep_k)} layers, the cache {len(layers)}")
    for i, layer in enumerate(layers):
        keep = None if keep_k is None else keep_k[i]
        # [b, head, pos, d] -> [b, pos, head, d] and back
        layer.keys = fake_quant_kv(layer.keys.transpose(1, 2), bits, key_axis, keep).transpose(1, 2).contiguous()
        layer.values = fake_quant_kv(layer.values.transpose(1, 2), bits, value_axis).transpose(1, 2).contiguous()


def kv_hooks(
    model: LoadedModel,
    bits: int,
    *,
    key_axis: str = "channel",
    value_axis: str = "token",
    keep_k: Bool[Tensor, "layer head d_head"] | None = None,
) -> list[tuple[str, Any]]:
    """Forward hooks that fake-quantize K (post-RoPE) and V at every layer, as if cached.

    Args:
        model: The model.
        bits: 2, 4 or 8.
        key_axis, value_axis: ``"token"`` or ``"channel"`` (KIVI: keys per channel, values per token).
        keep_k: Per layer, the K dims kept in full precision (massive-aware), e.g. the massive set
            of :func:`massmech.detect_massive` on K post-RoPE.

    Per-channel ranges come from each row's prompt tokens (:func:`massmech.causal.batch.current_masks`;
    every position outside an evaluation loop), never from padding or the scored answer.

    Returns:
        ``[(hook name, fn)]`` for ``model.bridge.hooks(fwd_hooks=...)``.
    """
    info = model.info
    if keep_k is not None and tuple(keep_k.shape) != (info.n_layers, info.n_kv_heads, info.d_head):
        raise QuantError(f"keep_k must be [layer, kv_head, d_head] = {(info.n_layers, info.n_kv_heads, info.d_head)}, got {tuple(keep_k.shape)}")
    hooks = []
    for layer in range(info.n_layers):
        for site, axis in (("k", key_axis), ("v", value_axis)):
            name, heads_first = model.hook_name(site, model.stages(site)[-1], layer)
            keep = keep_k[layer] if (site == "k" and keep_k is not None) else None

            def fn(x: Tensor, hook: Any, axis: str = axis, keep: Tensor | None = keep, heads_first: bool = heads_first) -> Tensor:
                y = to_heads(x, heads_first, info.n_kv_heads)  # [b, pos, head, d]
                masks = current_masks()
                ranges = None if masks is None else masks.at("prompt", y.shape[0], y.shape[1])
                y = fake_quant_kv(y, bits, axis, keep, ranges)
                return from_heads(y, x, heads_first)

            hooks.append((name, fn))
    return hooks
