"""Fake quantization of a loaded model: quantize, then dequantize (weights and caches stay float).

Fake-quant is the right form for analysis: the model runs, and its hooks fire, exactly as before,
with the quantization error in place. Weight methods edit the decoder's linear layers in place
(attention and MLP projections; embeddings, norms and the LM head are kept), so the bridge sees
them at once:

* ``rtn``: symmetric round-to-nearest, ``bits`` in {4, 8}; per output channel (``group_size=None``)
  or per group of ``group_size`` input weights, one scale per group;
* ``gguf-q8_0``, ``gguf-q5_0``, ``gguf-q4_1``, ``gguf-q4_0``: llama.cpp's block formats (32 weights
  per block) through the ``gguf`` package's own ``quants.quantize``/``dequantize``.

:func:`quantize_activations` adds the activation half of naive W8A8: the input of every edited
layer is fake-quantized per tensor (one dynamic int8 scale, blind to outlier channels).

KV-cache quantization acts on the cached site, post-RoPE K and V (:func:`fake_quant_kv`): asymmetric
min-max quantization per token (over each head's dims) or per channel (over the tokens,
KIVI-style), and a massive-aware variant that keeps chosen K dims in full precision and
quantizes the rest. :func:`kv_hooks` applies it to every position in one forward pass (K/V as
the later layers' queries would read them back); :func:`quantize_cache` applies it to a
generation's cache after the prefill, which is what transformers' ``QuantizedCache`` does.

:func:`massive_preservation` measures what a variant did to the massive values: recall of the
clean model's massive set and the relative error of M on massive vs other dims.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from jaxtyping import Bool, Float
from torch import Tensor, nn

from massmech.capture import QKVStats
from massmech.detect import detect_massive
from massmech.models import LoadedModel

GGUF_FORMATS = {"gguf-q8_0": "Q8_0", "gguf-q5_0": "Q5_0", "gguf-q4_1": "Q4_1", "gguf-q4_0": "Q4_0"}
WEIGHT_METHODS = ("rtn", *GGUF_FORMATS)
RTN_BITS = (4, 8)
KV_AXES = ("token", "channel")
KV_BITS = (2, 4, 8)
SCALE_BITS = 16  # scales (and zero points) are stored in fp16


class QuantError(ValueError):
    """Unknown method, unsupported bits, or a group size that does not fit."""


def _divisors(n: int) -> list[int]:
    return [d for d in range(2, n + 1) if n % d == 0]


# --------------------------------------------------------------------------- weights
def rtn(w: Float[Tensor, "out inp"], bits: int, group_size: int | None = None) -> Float[Tensor, "out inp"]:
    """Symmetric round-to-nearest fake-quant of a weight matrix.

    Each output row (or each group of ``group_size`` consecutive input weights in a row) gets
    ``scale = max|w| / (2**(bits-1) - 1)``; values become ``clamp(round(w / scale)) * scale``.

    Raises:
        QuantError: ``bits`` not in (4, 8), or ``group_size`` does not divide the input width
            (the message lists the sizes that do).
    """
    if bits not in RTN_BITS:
        raise QuantError(f"rtn supports bits {RTN_BITS}, got {bits}")
    out_f, in_f = w.shape
    g = in_f if group_size is None else group_size
    if g < 1 or in_f % g:
        raise QuantError(f"group_size {group_size} does not divide the input width {in_f}; sizes that do: {_divisors(in_f)}")
    qmax = 2 ** (bits - 1) - 1
    x = w.detach().float().reshape(out_f, in_f // g, g)  # [out, groups, g]
    scale = x.abs().amax(-1, keepdim=True) / qmax
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.clamp(torch.round(x / safe), -qmax, qmax)
    return (q * scale).reshape(out_f, in_f).to(w.dtype)


def gguf_round_trip(w: Float[Tensor, "out inp"], fmt: str) -> Float[Tensor, "out inp"]:
    """Quantize to a llama.cpp format (``Q8_0``, ``Q5_0``, ``Q4_1``, ``Q4_0``) and back, with ``gguf``."""
    from gguf import GGMLQuantizationType, quants
    from gguf.constants import GGML_QUANT_SIZES

    qtype = GGMLQuantizationType[fmt]
    block = GGML_QUANT_SIZES[qtype][0]
    if w.shape[-1] % block:
        raise QuantError(f"{fmt} needs rows that are a multiple of {block} weights, got {w.shape[-1]}")
    arr = w.detach().float().cpu().numpy()
    back = quants.dequantize(quants.quantize(arr, qtype), qtype)
    return torch.from_numpy(np.ascontiguousarray(back, dtype=np.float32)).reshape(w.shape).to(w.dtype).to(w.device)


def bits_per_weight(method: str, bits: int | None = None, group_size: int | None = None, in_features: int | None = None) -> float:
    """Storage cost of one weight, scales included (fp16 scales; GGUF's own block layouts)."""
    if method in GGUF_FORMATS:
        from gguf import GGMLQuantizationType
        from gguf.constants import GGML_QUANT_SIZES

        block, nbytes = GGML_QUANT_SIZES[GGMLQuantizationType[GGUF_FORMATS[method]]]
        return 8 * nbytes / block
    if method == "rtn":
        per = group_size or in_features
        if bits is None or per is None:
            raise QuantError("rtn bits per weight need bits and a group size (or the input width)")
        return bits + SCALE_BITS / per
    raise QuantError(f"unknown weight method {method!r}; choose from {WEIGHT_METHODS}")


def _clean(name: str) -> str:
    return name.replace("._original_component", "")


def decoder_linears(hf_model: nn.Module) -> dict[str, nn.Module]:
    """Every ``nn.Linear`` (or GPT-2 ``Conv1D``) of a Hugging Face model's decoder blocks, by clean
    Hugging Face name (bridge wrappers left out); embeddings, norms and the LM head are not."""
    from transformers.pytorch_utils import Conv1D

    found = {}
    for name, mod in hf_model.named_modules():
        if isinstance(mod, (nn.Linear, Conv1D)) and not isinstance(getattr(mod, "_original_component", None), nn.Module):
            clean = _clean(name)
            if ".layers." in f".{clean}" or ".h." in f".{clean}":
                found[clean] = mod
    if not found:
        raise QuantError(f"found no decoder linear layers in {type(hf_model).__name__}")
    return found


def weight_matrix(mod: nn.Module) -> Tensor:
    """A linear layer's weight as ``[out, in]`` (GPT-2's ``Conv1D`` stores it transposed)."""
    from transformers.pytorch_utils import Conv1D

    return mod.weight.T if isinstance(mod, Conv1D) else mod.weight


def target_layers(model: LoadedModel) -> dict[str, nn.Module]:
    """The linear layers weight quantization edits (:func:`decoder_linears` of the bridged model)."""
    return decoder_linears(model.bridge.original_model)


@dataclass(frozen=True)
class WeightReport:
    """What :func:`quantize_weights` changed.

    Attributes:
        method, bits, group_size: The method.
        layers: Hugging Face names of the edited layers.
        bits_per_weight: Average over the edited weights.
        rel_error: ``||W_q - W|| / ||W||`` over all edited weights.
    """

    method: str
    bits: int | None
    group_size: int | None
    layers: tuple[str, ...]
    bits_per_weight: float
    rel_error: float


def quantize_weights(model: LoadedModel | nn.Module, method: str, *, bits: int | None = None, group_size: int | None = None) -> WeightReport:
    """Fake-quantize the decoder's linear weights of ``model`` in place.

    Args:
        model: The model (its bridge sees the new weights at once), or a plain Hugging Face model.
        method: ``"rtn"`` or a ``"gguf-*"`` format (see the module doc).
        bits: For ``rtn``: 4 or 8. GGUF formats fix their own bits (pass ``None``).
        group_size: For ``rtn``: input weights per scale (``None``: one scale per output row).

    Raises:
        QuantError: Unknown method, bits the method does not support, a group size that does not
            divide a layer's input width; checked for every layer before any weight changes.
    """
    from transformers.pytorch_utils import Conv1D

    if method not in WEIGHT_METHODS:
        raise QuantError(f"unknown weight method {method!r}; choose from {WEIGHT_METHODS}")
    if method in GGUF_FORMATS and bits is not None:
        raise QuantError(f"{method} has a fixed number of bits; pass bits=None")
    if method in GGUF_FORMATS and group_size is not None:
        raise QuantError(f"{method} has fixed 32-weight blocks; pass group_size=None")
    layers = target_layers(model) if isinstance(model, LoadedModel) else decoder_linears(model)

    def quant(w: Tensor) -> Tensor:
        return rtn(w, bits, group_size) if method == "rtn" else gguf_round_trip(w, GGUF_FORMATS[method])

    for name, mod in layers.items():  # validate everything first: no half-quantized model
        w = weight_matrix(mod)
        try:
            quant(w[:1])
        except QuantError as err:
            raise QuantError(f"{name}: {err}") from None
    err2 = ref2 = bits_sum = 0.0
    n = 0
    with torch.no_grad():
        for mod in layers.values():
            w = weight_matrix(mod)
            q = quant(w)
            err2 += float((q.double() - w.double()).pow(2).sum())
            ref2 += float(w.double().pow(2).sum())
            bits_sum += bits_per_weight(method, bits, group_size, w.shape[1]) * w.numel()
            n += w.numel()
            mod.weight.copy_(q.T if isinstance(mod, Conv1D) else q)
    return WeightReport(method, bits, group_size, tuple(layers), bits_sum / n, (err2 / ref2) ** 0.5 if ref2 else 0.0)


def _llmcompressor() -> Any:
    try:
        import llmcompressor
    except ImportError as err:
        raise QuantError(
            "gptq runs through llmcompressor, which is not installed: pip install 'massmech[quant]' && "
            "pip install --no-deps llmcompressor==0.14.0.1 (without its transformers<=5.17 pin, "
            "which garbles the GGUF Gemma-3 tokenizer)"
        ) from err
    return llmcompressor


def gptq(hf_model: nn.Module, tokenizer: Any, windows: Sequence[Sequence[int]], *, bits: int = 4, group_size: int | None = 64) -> None:
    """GPTQ (Frantar et al., 2023) of the decoder's linear layers through llmcompressor, in place.

    Symmetric integer weights, one scale per ``group_size`` input weights (``None``: per output
    row), the LM head kept. llmcompressor leaves fake-quant modules behind; their ``weight``
    tensors are overwritten with the dequantized weights, which is all that massmech reads back
    (:mod:`massmech.quant_study` copies them into a clean model).

    Raises:
        QuantError: llmcompressor is missing (names the extra), bits not 4/8, or a group size that
            does not divide a layer's width.
    """
    _llmcompressor()
    import tempfile

    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
    from compressed_tensors.quantization.lifecycle.forward import fake_quantize
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.quantization import GPTQModifier

    if bits not in RTN_BITS:
        raise QuantError(f"gptq supports bits {RTN_BITS}, got {bits}")
    for name, mod in decoder_linears(hf_model).items():
        if group_size is not None and mod.in_features % group_size:
            raise QuantError(f"{name}: group_size {group_size} does not divide the input width "
                             f"{mod.in_features}; sizes that do: {_divisors(mod.in_features)}")
    args = QuantizationArgs(num_bits=bits, type="int", symmetric=True,
                            strategy="channel" if group_size is None else "group", group_size=group_size)
    recipe = GPTQModifier(config_groups={"g": QuantizationScheme(targets=["Linear"], weights=args)}, ignore=["lm_head"])
    data = Dataset.from_dict({"input_ids": [list(w) for w in windows], "attention_mask": [[1] * len(w) for w in windows]})
    config = hf_model.config
    old_path, old_qc = config._name_or_path, config.__dict__.pop("quantization_config", None)
    with tempfile.TemporaryDirectory() as tmp:  # oneshot re-reads the config from name_or_path
        # a model dequantized from GGUF still says quant_method "gguf", which oneshot refuses
        config.save_pretrained(tmp)
        config._name_or_path = tmp
        try:
            oneshot(model=hf_model, processor=tokenizer, dataset=data, recipe=recipe,
                    num_calibration_samples=len(windows), max_seq_length=max(map(len, windows)))
        finally:
            config._name_or_path = old_path
            if old_qc is not None:
                config.quantization_config = old_qc
    with torch.no_grad():
        for mod in hf_model.modules():
            scheme = getattr(mod, "quantization_scheme", None)
            if scheme is None or scheme.weights is None:
                continue
            w = fake_quantize(mod.weight, mod.weight_scale, mod.weight_zero_point, scheme.weights)
            mod.weight.copy_(w)


def fake_quant_per_tensor(x: Float[Tensor, ...], bits: int = 8) -> Float[Tensor, ...]:
    """Symmetric per-tensor fake-quant: one scale ``max|x| / (2**(bits-1) - 1)`` for the whole tensor."""
    qmax = 2 ** (bits - 1) - 1
    scale = x.detach().abs().amax().float() / qmax
    if scale == 0:
        return x
    return (torch.clamp(torch.round(x.float() / scale), -qmax, qmax) * scale).to(x.dtype)


def quantize_activations(model: LoadedModel | nn.Module, bits: int = 8) -> list[Any]:
    """Fake-quantize the input of every decoder linear layer, per tensor and dynamically (one scale
    per forward pass from its max): the outlier-blind activation half of naive W8A8.

    Returns:
        The hook handles (``handle.remove()`` undoes it).
    """
    if bits != 8:
        raise QuantError(f"activation quantization supports 8 bits, got {bits}")

    def pre_hook(module: nn.Module, args: tuple) -> tuple:
        return (fake_quant_per_tensor(args[0], bits), *args[1:])

    layers = target_layers(model) if isinstance(model, LoadedModel) else decoder_linears(model)
    return [mod.register_forward_pre_hook(pre_hook) for mod in layers.values()]


# --------------------------------------------------------------------------- KV cache
def fake_quant_kv(
    x: Float[Tensor, "batch pos head d_head"],
    bits: int,
    axis: str,
    keep: Bool[Tensor, "head d_head"] | None = None,
) -> Float[Tensor, "batch pos head d_head"]:
    """Asymmetric min-max fake-quant of cached keys or values (KIVI's, and quanto's, form).

    Args:
        x: Post-RoPE K or V, ``[batch, pos, head, d_head]``.
        bits: 2, 4 or 8.
        axis: ``"token"``: one scale and offset per (token, head) over its dims;
            ``"channel"``: one per (head, dim) over the tokens (KIVI's keys).
        keep: Dims kept in full precision (massive-aware): returned bit-exact and left out of the
            min/max of the rest.

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
    if keep is None:
        lo, hi = xf.amin(dims, keepdim=True), xf.amax(dims, keepdim=True)
    else:
        mask = keep.to(x.device)[None, None]  # [1, 1, head, d]
        lo = xf.masked_fill(mask, float("inf")).amin(dims, keepdim=True)
        hi = xf.masked_fill(mask, float("-inf")).amax(dims, keepdim=True)
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
    exact states of the new tokens). ``tests/test_quantize.py`` checks generations against
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
                if heads_first:  # [b, head, pos, d] -> [b, pos, head, d] and back
                    return fake_quant_kv(x.transpose(1, 2), bits, axis, keep).transpose(1, 2)
                return fake_quant_kv(x, bits, axis, keep)

            hooks.append((name, fn))
    return hooks


# --------------------------------------------------------------------------- measures
def massive_preservation(clean: QKVStats, quantized: QKVStats, *, lam: float = 5.0) -> pd.DataFrame:
    """How well a quantized model keeps the clean model's massive values, per (site, stage).

    Args:
        clean: Statistics of the clean model.
        quantized: Statistics of the quantized model on the same tokens.
        lam: Lambda of the massive rule (per-head mean), applied to both.

    Returns:
        One row per (site, stage) captured in both: ``n_massive`` (clean), ``recall`` (share of the
        clean massive (layer, head, dim) cells that are massive in the quantized model; NaN when the
        clean model has none), ``rel_error_massive`` and ``rel_error_other`` (``|M_q - M| / M``
        averaged over the massive cells and over the rest).

    Raises:
        QuantError: The statistics do not cover the same layers, shapes or token count.
    """
    if clean.layers != quantized.layers or clean.n_tokens != quantized.n_tokens:
        raise QuantError(
            "clean and quantized statistics must come from the same tokens and layers: "
            f"layers {clean.layers} vs {quantized.layers}, tokens {clean.n_tokens} vs {quantized.n_tokens}"
        )
    hits = {
        name: set(map(tuple, t[["site", "stage", "layer", "head", "dim"]].itertuples(index=False, name=None)))
        for name, t in (("clean", detect_massive(clean, lam=lam)), ("quant", detect_massive(quantized, lam=lam)))
    }
    rows = []
    for site, stage in clean.keys():
        if (site, stage) not in quantized.keys():
            continue
        m, mq = clean.norm(site, stage), quantized.norm(site, stage)  # [layer, head, d_head]
        if m.shape != mq.shape:
            raise QuantError(f"({site}, {stage}): shapes {tuple(m.shape)} vs {tuple(mq.shape)}")
        massive = m > lam * m.mean(-1, keepdim=True)
        live = m > 0  # dims that carry no energy at all (e.g. Gemma-3's zeroed pairs) have no relative error
        rel = (mq - m).abs() / m.clamp_min(torch.finfo(m.dtype).tiny)
        mine = {h for h in hits["clean"] if h[:2] == (site, stage)}
        kept = mine & hits["quant"]
        rows.append({
            "site": site,
            "stage": stage,
            "n_massive": len(mine),
            "recall": len(kept) / len(mine) if mine else float("nan"),
            "rel_error_massive": float(rel[massive].mean()) if massive.any() else float("nan"),
            "rel_error_other": float(rel[~massive & live].mean()) if (~massive & live).any() else float("nan"),
        })
    return pd.DataFrame(rows)
