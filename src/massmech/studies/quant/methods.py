"""Weight fake quantization: quantize, then dequantize (weights stay float).

Fake-quant is the right form for analysis: the model runs, and its hooks fire, exactly as before,
with the quantization error in place. Weight methods edit the decoder's linear layers in place
(attention and MLP projections; embeddings, norms and the LM head are kept), so the bridge sees
them at once:

* ``rtn``: symmetric round-to-nearest, ``bits`` in {4, 8}; per output channel (``group_size=None``)
  or per group of ``group_size`` input weights, one scale per group;
* ``gguf-q8_0``, ``gguf-q5_0``, ``gguf-q4_1``, ``gguf-q4_0``: llama.cpp's block formats (32 weights
  per block) through the ``gguf`` package's own ``quants.quantize``/``dequantize``;
* ``gptq`` through llmcompressor (``massmech[quant]``).

Activation and KV-cache quantization are :mod:`massmech.studies.quant.kv`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor, nn

from massmech.core import decoder
from massmech.core.models import LoadedModel
from massmech.errors import QuantError
from massmech.studies.quant.config import GGUF_FORMATS

WEIGHT_METHODS = ("rtn", *GGUF_FORMATS)
RTN_BITS = (4, 8)
SCALE_BITS = 16  # scales (and zero points) are stored in fp16


def _divisors(n: int) -> list[int]:
    return [d for d in range(2, n + 1) if n % d == 0]


# --------------------------------------------------------------------------- weights
def rtn(w: Float[Tensor, "out inp"], bits: int, group_size: int | None = None, *,
        generator: torch.Generator | None = None) -> Float[Tensor, "out inp"]:
    """Symmetric round-to-nearest fake-quant of a weight matrix.

    Each output row (or each group of ``group_size`` consecutive input weights in a row) gets
    ``scale = max|w| / (2**(bits-1) - 1)``; values become ``clamp(round(w / scale)) * scale``.
    With a ``generator`` the rounding is stochastic instead: ``floor(w / scale + u)``, ``u`` uniform
    in [0, 1), so each value rounds up with probability equal to its fraction (unbiased), one
    realization per seed.

    >>> w = torch.tensor([[0.7, 0.1, -0.3]])
    >>> rtn(w, 4)  # scale 0.1: the grid is multiples of 0.1
    tensor([[ 0.7000,  0.1000, -0.3000]])
    >>> g = torch.Generator().manual_seed(0)
    >>> bool(((rtn(torch.tensor([[0.7, 0.04]]), 4, generator=g) - torch.tensor([[0.7, 0.0]])).abs() <= 0.1 + 1e-6).all())
    True

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
    if generator is None:
        q = torch.round(x / safe)
    else:
        q = torch.floor(x / safe + torch.rand(x.shape, generator=generator, dtype=x.dtype))
    q = torch.clamp(q, -qmax, qmax)
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
    if method not in WEIGHT_METHODS:
        raise QuantError(f"unknown weight method {method!r}; choose from {WEIGHT_METHODS}")
    if method in GGUF_FORMATS and bits is not None:
        raise QuantError(f"{method} has a fixed number of bits; pass bits=None")
    if method in GGUF_FORMATS and group_size is not None:
        raise QuantError(f"{method} has fixed 32-weight blocks; pass group_size=None")
    layers = decoder.linears(model)

    def quant(w: Tensor) -> Tensor:
        return rtn(w, bits, group_size) if method == "rtn" else gguf_round_trip(w, GGUF_FORMATS[method])

    for name, mod in layers.items():  # validate everything first: no half-quantized model
        w = decoder.weight_matrix(mod)
        try:
            quant(w[:1])
        except QuantError as err:
            raise QuantError(f"{name}: {err}") from None
    err2 = ref2 = bits_sum = 0.0
    n = 0
    with torch.no_grad():
        for mod in layers.values():
            w = decoder.weight_matrix(mod)
            q = quant(w)
            err2 += float((q.double() - w.double()).pow(2).sum())
            ref2 += float(w.double().pow(2).sum())
            bits_sum += bits_per_weight(method, bits, group_size, w.shape[1]) * w.numel()
            n += w.numel()
            w.copy_(q)  # w is the layer's weight (a transposed view for Conv1D)
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
    (:mod:`massmech.studies.quant.study` copies them into a clean model).

    Raises:
        QuantError: llmcompressor is missing (names the extra), bits not 4/8, or a group size that
            does not divide a layer's width.
    """
    _llmcompressor()
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
    from compressed_tensors.quantization.lifecycle.forward import fake_quantize
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.quantization import GPTQModifier

    if bits not in RTN_BITS:
        raise QuantError(f"gptq supports bits {RTN_BITS}, got {bits}")
    for name, mod in decoder.linears(hf_model).items():
        if group_size is not None and mod.in_features % group_size:
            raise QuantError(f"{name}: group_size {group_size} does not divide the input width "
                             f"{mod.in_features}; sizes that do: {_divisors(mod.in_features)}")
    args = QuantizationArgs(num_bits=bits, type="int", symmetric=True,
                            strategy="channel" if group_size is None else "group", group_size=group_size)
    recipe = GPTQModifier(config_groups={"g": QuantizationScheme(targets=["Linear"], weights=args)}, ignore=[decoder.head_name(hf_model)])
    data = Dataset.from_dict({"input_ids": [list(w) for w in windows], "attention_mask": [[1] * len(w) for w in windows]})
    # oneshot re-reads the config from its source folder, and refuses one that says quant_method "gguf"
    with decoder.saved_config(hf_model) as hf:
        oneshot(model=hf, processor=tokenizer, dataset=data, recipe=recipe,
                num_calibration_samples=len(windows), max_seq_length=max(map(len, windows)))
    with torch.no_grad():
        for mod in hf_model.modules():
            scheme = getattr(mod, "quantization_scheme", None)
            if scheme is None or scheme.weights is None:
                continue
            w = fake_quantize(mod.weight, mod.weight_scale, mod.weight_zero_point, scheme.weights)
            mod.weight.copy_(w)
