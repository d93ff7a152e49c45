"""Quantized variants: compute the weights a :class:`~massmech.studies.quant.config.QuantSpec` changes, cache them, and apply them to a loaded model.

:func:`variant_weights` computes the changed weights on a fresh copy of the model and caches them
on disk (``cache_dir()/quantized``, keyed by everything that defines them), so a sweep pays each
calibration once. :func:`apply_variant` puts them, and the runtime part of the method (activation
or KV-cache fake-quant hooks), into a loaded model and takes everything out again on exit.

Base-model honesty: the embedded models are themselves dequantized GGUF files. Every row names
its base format (:func:`base_format`), and ``same_as_base`` flags a GGUF round trip into the
format the weights already have (a no-op by construction).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from massmech.core import decoder
from massmech.core.catalog import cache_dir
from massmech.core.loading import load_hf
from massmech.core.models import LoadedModel
from massmech.errors import QuantError
from massmech.files.io import atomic_write
from massmech.studies.quant.config import (
    CACHE_VERSION,
    KV_METHODS,
    QK_METHODS,
    QuantSpec,
    QuantStudyConfig,
)
from massmech.studies.quant.data import StudyData
from massmech.studies.quant.kv import kv_hooks, quantize_activations
from massmech.studies.quant.methods import (
    GGUF_FORMATS,
    SCALE_BITS,
    bits_per_weight,
    gptq,
    quantize_weights,
    rtn,
)
from massmech.studies.quant.smoothing import awq, smoothquant


# ------------------------------------------------------------------------- weights
def _spec_key(model: str, spec: QuantSpec, cfg: QuantStudyConfig) -> str:
    key = {"model": model, "spec": spec.key_dict(), "calib_tokens": cfg.calib_tokens,
           "seq_len": cfg.seq_len, "seed": cfg.seed, "v": CACHE_VERSION}
    if spec.method in QK_METHODS:  # the kept rows depend on the massive rule
        key["lam"] = cfg.lam
    blob = json.dumps(key, sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)[-60:]


def compute_weights(model: str, spec: QuantSpec, calib: Sequence[Sequence[int]], *, progress: bool = False,
                    lam: float = 5.0, seed: int = 0) -> dict[str, torch.Tensor]:
    """The parameters ``spec`` changes, computed on a fresh copy of ``model`` (HF names).

    ``lam`` and ``seed``: the massive rule and the control's draw of the ``qk-rtn-keep-*`` methods.
    """
    hf, tok, *_ = load_hf(model)
    clean = {k: v.detach().clone() for k, v in hf.state_dict().items()}
    m, bits, g = spec.method, spec.bits, spec.group_size
    if m == "rtn":
        quantize_weights(hf, "rtn", bits=bits, group_size=g)
    elif m in GGUF_FORMATS:
        quantize_weights(hf, m)
    elif m == "gptq":
        gptq(hf, tok, calib, bits=bits, group_size=g)
    elif m == "awq":
        check_groups(hf, g)
        awq(hf, calib, lambda w: rtn(w, bits, g), group_size=g, progress=progress)
    elif m == "smoothquant":
        smoothquant(hf, calib, alpha=spec.alpha)
        quantize_weights(hf, "rtn", bits=8)
    elif m == "w8a8-naive":
        quantize_weights(hf, "rtn", bits=8)
    elif m in QK_METHODS:
        draw_seed = seed if spec.draw == 0 else seed * 1_000_003 + spec.draw  # draw d: other rows, other rounding
        keep = None if m == "qk-rtn" else qk_keep_rows(model, calib, lam=lam, random=m == "qk-rtn-keep-random",
                                                        seed=draw_seed)
        rounding = None if spec.draw == 0 else torch.Generator().manual_seed(draw_seed)
        _quantize_qk(hf, bits, g, keep, sites=spec.sites, layers=qk_layers(hf.config, spec.layers), generator=rounding)
    state = hf.state_dict()
    return {k: v.detach().clone().contiguous() for k, v in state.items() if k in clean and not torch.equal(v, clean[k])}


def qk_keep_rows(model: str, calib: Sequence[Sequence[int]], *, lam: float = 5.0, random: bool = False,
                 seed: int = 0) -> dict[str, torch.Tensor]:
    """Rows of each layer's W_q and W_k to keep exact: those producing the massive pre-RoPE Q/K
    dims on the calibration windows (lambda rule, per head), or with ``random`` the same number of
    other rows in each head (seeded): ``{"q": [layer, head, d_head] bool, "k": ...}``.

    The dims are read where the weights produce them: on a QK-norm model before the norm (``raw``),
    whose gain would otherwise choose the rows (issue 26)."""
    from massmech.core.capture import capture_stats
    from massmech.core.detect import massive_mask
    from massmech.core.loading import load_model

    lm = load_model(model)
    stage = lm.stages("q")[0]  # "raw" before QK-norm, else "pre"
    stats = capture_stats(lm, [list(w) for w in calib], sites=("q", "k"), stages=(stage,), progress=False)
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for site in ("q", "k"):
        sel = massive_mask(stats.norm(site, stage), lam=lam)  # [layer, head, d]
        if random:  # the same count per head among the other dims
            key = torch.rand(sel.shape, generator=gen).masked_fill(sel, float("inf"))
            rank = key.argsort(-1).argsort(-1)
            sel = rank < sel.sum(-1, keepdim=True)
        out[site] = sel
    return out


def qk_layers(config: Any, which: str) -> list[int] | None:
    """The layers a ``qk-*`` variant quantizes: ``None`` for ``"all"``; for ``"local"``/``"global"``
    those whose ``config.layer_types`` entry is sliding-window / full attention.

    Raises:
        QuantError: The model has no layer of that kind (every layer is global on Llama-style models).

    >>> from types import SimpleNamespace
    >>> qk_layers(SimpleNamespace(layer_types=["sliding_attention", "full_attention"]), "local")
    [0]
    """
    if which == "all":
        return None
    types = list(getattr(config, "layer_types", None) or ["full_attention"] * int(config.num_hidden_layers))
    want = "sliding_attention" if which == "local" else "full_attention"
    chosen = [i for i, t in enumerate(types) if t == want]
    if not chosen:
        raise QuantError(f"layers={which!r}: the model has no {want} layer (its layer types: {sorted(set(types))}); "
                         "use layers='all'")
    return chosen


def _quantize_qk(hf: Any, bits: int, group_size: int | None, keep: dict[str, torch.Tensor] | None, *,
                 sites: str = "qk", layers: list[int] | None = None, generator: torch.Generator | None = None) -> None:
    """RTN on W_q and W_k (``sites``) of ``layers`` (``None``: every layer); rows in ``keep``
    (``[layer, head, d_head]``) stay exact; ``generator``: stochastic rounding (see :func:`rtn`)."""
    for name, mod in decoder.linears(hf).items():
        site, layer = decoder.linear_role(name)
        if site not in ("q", "k") or site not in sites or (layers is not None and layer not in layers):
            continue
        w = decoder.weight_matrix(mod)
        with torch.no_grad():
            q = rtn(w.detach().float(), bits, group_size, generator=generator)
            if keep is not None:
                rows = keep[site][layer].flatten().to(w.device)  # head-major: row = head * d_head + dim
                if rows.numel() != w.shape[0]:
                    raise QuantError(f"{name}: {w.shape[0]} rows, but {rows.numel()} (head, dim) cells")
                q[rows] = w.detach().float()[rows]
            w.copy_(q.to(w.dtype))


def check_groups(hf: Any, group_size: int | None) -> None:
    if group_size is None:
        return
    for name, mod in decoder.linears(hf).items():
        try:
            rtn(decoder.weight_matrix(mod)[:1].detach(), 4, group_size)
        except QuantError as err:  # names the sizes that divide
            raise QuantError(f"{name}: {err}") from None


def variant_weights(model: str, spec: QuantSpec, cfg: QuantStudyConfig, calib: Sequence[Sequence[int]], *, progress: bool = False) -> dict[str, torch.Tensor]:
    """:func:`compute_weights`, cached on disk under ``cache_dir()/quantized``."""
    from safetensors.torch import load_file, save_file

    if spec.family in ("reference", "kv"):
        return {}
    path = cache_dir() / "quantized" / f"{_slug(model)}-{spec.label}-{_spec_key(model, spec, cfg)}.safetensors"
    if path.exists():
        return load_file(path)
    weights = compute_weights(model, spec, calib, progress=progress, lam=cfg.lam, seed=cfg.seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda p: save_file(weights, p))
    return weights


@contextlib.contextmanager
def apply_variant(model: LoadedModel, spec: QuantSpec, weights: dict[str, torch.Tensor], keep_k: torch.Tensor | None = None) -> Iterator[None]:
    """Put a variant into ``model`` for the duration of the block; everything is undone on exit.

    Args:
        model: The clean model.
        spec: The variant.
        weights: Its changed parameters (:func:`variant_weights`).
        keep_k: Massive K dims kept by ``kv-massive-aware``.
    """
    params = decoder.parameters(model)
    missing = [k for k in weights if k not in params]
    if missing:
        raise QuantError(f"{len(missing)} quantized parameters are not in {model.info.name}, e.g. {missing[:3]}")
    saved = {k: params[k].detach().clone() for k in weights}
    handles: list[Any] = []
    hooks: list[Any] = []
    if spec.method in KV_METHODS:
        if spec.method == "kv-massive-aware" and keep_k is None:
            raise QuantError("kv-massive-aware needs keep_k, the massive K dims")
        axis = "channel" if spec.method == "kv-per-channel" else "token"
        hooks = kv_hooks(model, spec.bits, key_axis=axis, value_axis="token",
                         keep_k=keep_k if spec.method == "kv-massive-aware" else None)
    try:
        with torch.no_grad():
            for k, v in weights.items():
                params[k].copy_(v.to(params[k].dtype))
        if spec.family == "w8a8":
            handles = quantize_activations(model, spec.bits)
        with model.bridge.hooks(fwd_hooks=hooks):
            yield
    finally:
        for h in handles:
            h.remove()
        with torch.no_grad():
            for k, v in saved.items():
                params[k].copy_(v)


# --------------------------------------------------------------------------- measures
def base_format(model: LoadedModel) -> str:
    """The storage format the loaded weights come from: the formats of the decoder's matrices by
    share of weights, then those of the Q and K projections, e.g. ``"GGUF Q4_1 100% (q/k: Q4_1)"``
    or ``"GGUF Q5_0 64%, Q4_K 24%, Q6_K 12%, Q8_0 1% (q/k: Q5_0)"``."""
    source = model.info.source
    if "random init" in source:
        return "float (random init)"
    m = re.search(r"(\S+\.gguf)$", source)
    if not m:
        return "float (not a quantized file)"
    from massmech.core.loading import _gemma3_gguf, _smollm2_gguf

    find = {"smollm2-135m": _smollm2_gguf, "gemma3-270m": lambda: _gemma3_gguf(assemble=True)[0]}.get(model.info.name)
    path = Path(find() if find else source.split(": ", 1)[-1]).resolve()
    stat = path.stat()
    return _gguf_format(str(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _gguf_format(path: str, size: int, mtime_ns: int) -> str:
    """:func:`base_format` of one GGUF file, read once per process (a read parses all its
    metadata, the vocabulary included: seconds); ``size`` and ``mtime_ns`` key a changed file anew."""
    from gguf import GGUFReader

    sizes: dict[str, int] = {}
    qk: set[str] = set()
    for t in GGUFReader(path).tensors:
        if t.name.startswith("blk.") and t.name.endswith(".weight") and len(t.shape) == 2:
            kind = t.tensor_type.name
            sizes[kind] = sizes.get(kind, 0) + int(t.n_elements)
            if ".attn_q." in t.name or ".attn_k." in t.name:
                qk.add(kind)
    total = sum(sizes.values())
    mix = ", ".join(f"{k} {v / total:.0%}" for k, v in sorted(sizes.items(), key=lambda kv: -kv[1]))
    return f"GGUF {mix} (q/k: {'/'.join(sorted(qk))})"


def same_as_base_format(method: str, base: str) -> bool:
    """A GGUF round trip into the one format every decoder matrix already has: a no-op."""
    return method in GGUF_FORMATS and base.startswith(f"GGUF {GGUF_FORMATS[method]} 100%")


def kv_bits(model: LoadedModel, spec: QuantSpec, data: StudyData, tokens: float | None = None) -> float:
    """Bits per cached K value of a KV variant: its bits, the fp16 kept dims (massive-aware), and
    one fp16 scale and offset per group: per token ``d_head`` values; per channel ``tokens`` values
    (the sequence length the ranges span; default the mean held-out window length)."""
    info = model.info
    share = float(data.keep_k.float().mean()) if (spec.method == "kv-massive-aware" and data.keep_k is not None) else 0.0
    if spec.method == "kv-per-channel":
        per = float(tokens) if tokens is not None else float(np.mean([len(w) for w in data.held]))
    else:
        per = info.d_head
    return (1 - share) * spec.bits + share * 16 + 2 * SCALE_BITS / per


def bits_per_value(model: LoadedModel, spec: QuantSpec, weights: dict, data: StudyData) -> float:
    """Bits per weight of a weight variant, or per cached K value of a KV variant (:func:`kv_bits`)."""
    if spec.family == "kv":
        return kv_bits(model, spec, data)
    if spec.family == "reference":
        return float("nan")
    if spec.method in GGUF_FORMATS:
        return bits_per_weight(spec.method)
    lin = [k for k in weights if k.endswith(".weight") and weights[k].ndim == 2]
    total = sum(weights[k].numel() for k in lin)
    g = spec.group_size
    bits = sum(bits_per_weight("rtn", spec.bits, g, weights[k].shape[1]) * weights[k].numel() for k in lin)
    if spec.method in QK_METHODS:  # rows kept exact cost 16 bits instead
        params = decoder.parameters(model)
        for k in lin:
            kept = int((weights[k].to(params[k].dtype) == params[k].detach()).all(1).sum())
            bits += kept * weights[k].shape[1] * (16 - bits_per_weight("rtn", spec.bits, g, weights[k].shape[1]))
    return bits / max(total, 1)