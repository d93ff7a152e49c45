"""The quantization study: which quantizers keep the massive values, and what that does to tasks.

A *variant* is a :class:`QuantSpec` (method, bits, group size, SmoothQuant's alpha) applied to a
model. :func:`variant_weights` computes the weights it changes on a fresh copy of the model and
caches them on disk (``~/.cache/massmech/quantized``, keyed by everything that defines them), so
a sweep pays each calibration once. :func:`apply_variant` puts them, and the runtime part of the
method (activation or KV-cache fake-quant hooks), into a loaded model and takes everything out
again on exit. :func:`measure` scores one variant:

* massive-value preservation against the clean model, for Q and K pre and post RoPE
  (:func:`massmech.quantize.massive_preservation`);
* accuracy on parametric and contextual tasks, with bootstrap CIs;
* perplexity on held-out natural text (windows disjoint from the calibration windows);
* bits per weight, or per cached K value.

:func:`run_quant_study` runs a grid of variants into one tidy table (``results.parquet``: one
row per model x variant x measure), writing each finished variant at once so a rerun resumes.

Methods
-------
=====================  ===========  ====================================================
method                 bits         what it does
=====================  ===========  ====================================================
``none``               -            the model as loaded (the reference row)
``rtn``                4, 8         symmetric round-to-nearest, per row or per group
``gptq``               4, 8         GPTQ through llmcompressor (``massmech[quant]``)
``awq``                4            activation-aware scales (:func:`massmech.smoothing.awq`) + RTN
``smoothquant``        8            SmoothQuant scales, then int8 per-row weights and
                                    per-tensor dynamic int8 activations
``w8a8-naive``         8            the same W8A8 without smoothing (outlier-blind)
``gguf-q8_0`` ...      fixed        llama.cpp Q8_0 / Q5_0 / Q4_1 / Q4_0 round trips
``kv-per-token``       2, 4, 8      post-RoPE K and V min-max per token
``kv-per-channel``     2, 4, 8      K per channel (KIVI), V per token
``kv-massive-aware``   2, 4, 8      K per token with the massive K dims kept in fp16
=====================  ===========  ====================================================

Base-model honesty: the embedded models are themselves dequantized GGUF files. Every row names
its base format (:func:`base_format`), and ``same_as_base`` flags a GGUF round trip into the
format the weights already have (a no-op by construction).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from massmech.capture import capture_stats
from massmech.corpus import bbc_news, token_windows
from massmech.evaluate import evaluate, perplexity, summarize
from massmech.models import LoadedModel, cache_dir, load_hf, load_model
from massmech.quantize import (
    GGUF_FORMATS,
    KV_BITS,
    SCALE_BITS,
    QuantError,
    bits_per_weight,
    decoder_linears,
    gptq,
    kv_hooks,
    massive_preservation,
    quantize_activations,
    quantize_weights,
    rtn,
    weight_matrix,
)
from massmech.runs import atomic_write, check_out, finish_study_dir, manifest, open_study_dir
from massmech.smoothing import awq, block_maps, decoder_blocks, smoothquant
from massmech.tasks import TASKS, get_task

KV_METHODS = ("kv-per-token", "kv-per-channel", "kv-massive-aware")
METHODS = ("none", "rtn", "gptq", "awq", "smoothquant", "w8a8-naive", *GGUF_FORMATS, *KV_METHODS)
BITS = {"rtn": (4, 8), "gptq": (4, 8), "awq": (4,), "smoothquant": (8,), "w8a8-naive": (8,)} | dict.fromkeys(KV_METHODS, KV_BITS)
DEFAULT_BITS = {"rtn": 4, "gptq": 4, "awq": 4, "smoothquant": 8, "w8a8-naive": 8} | dict.fromkeys(KV_METHODS, 4)
GROUPED = ("rtn", "gptq", "awq")  # methods with a group size
DEFAULT_GROUP = 64  # divides SmolLM2's 576/1536 and Gemma-3's 640/2048 widths
DEFAULT_TASKS = ("country_capital", "city_country", "passkey", "kv_lookup", "knowledge_conflict")
CACHE_VERSION = 1
# The study's grids (analyses/quant_study.py, paper_figures/fig_quant_*.py): (method, bits, group size)
WEIGHT_GRID = (("rtn", 8, None), ("rtn", 4, 64), ("gptq", 4, 64), ("awq", 4, 64), ("smoothquant", 8, None),
               ("w8a8-naive", 8, None), ("gguf-q8_0", None, None), ("gguf-q5_0", None, None),
               ("gguf-q4_1", None, None), ("gguf-q4_0", None, None))
KV_GRID = tuple((m, b, None) for b in (4, 2) for m in KV_METHODS)
# "core": the questions' variants, most telling first (outlier-aware vs blind at 4 and 8 bits, KV
# at 4 then 2 bits); what 2 CPU cores could run on Gemma-3-270M in the time we had
CORE_GRID = (("awq", 4, 64), ("rtn", 4, 64), ("smoothquant", 8, None), ("w8a8-naive", 8, None),
             *((m, 4, None) for m in KV_METHODS), ("gptq", 4, 64), *((m, 2, None) for m in KV_METHODS),
             ("rtn", 8, None), ("gguf-q4_0", None, None))
GRIDS = {"full": WEIGHT_GRID + KV_GRID, "core": CORE_GRID, "weights": WEIGHT_GRID, "kv": KV_GRID}
STUDY_GRID = {"smollm2-135m": "full", "gemma3-270m": "core"}  # the grid make quant / the figures run
SITES = (("q", "pre"), ("q", "post"), ("k", "pre"), ("k", "post"))


@dataclass(frozen=True)
class QuantSpec:
    """One quantized variant.

    Attributes:
        method: One of :data:`METHODS`.
        bits: Bits per weight (or per cached value); ``None`` for ``none`` and GGUF formats.
        group_size: Input weights per scale for ``rtn``/``gptq``/``awq`` (``None``: per row).
        alpha: SmoothQuant's migration strength.
    """

    method: str
    bits: int | None = None
    group_size: int | None = None
    alpha: float = 0.5

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise QuantError(f"unknown method {self.method!r}; methods are {', '.join(METHODS)}")
        allowed = BITS.get(self.method)
        if allowed is None and self.bits is not None:
            raise QuantError(f"{self.method} has no bits setting (its format fixes them); leave bits unset")
        if allowed is not None and self.bits not in allowed:
            raise QuantError(f"{self.method} supports bits {allowed}, got {self.bits}")
        if self.group_size is not None and self.method not in GROUPED:
            raise QuantError(f"{self.method} takes no group size (only {', '.join(GROUPED)} do)")
        if self.group_size is not None and self.group_size < 1:
            raise QuantError(f"group_size must be >= 1, got {self.group_size}")
        if not 0.0 <= self.alpha <= 1.0:
            raise QuantError(f"alpha must be in [0, 1], got {self.alpha}")

    @classmethod
    def of(cls, method: str, bits: int | None = None, group_size: int | None | str = "auto", alpha: float = 0.5) -> QuantSpec:
        """A spec with the method's defaults filled in: bits (4 for weight-only, 8 for W8A8, 4 for
        KV) and, with ``group_size="auto"``, groups of 64 at 4 bits and per row at 8 bits."""
        if method not in METHODS:
            raise QuantError(f"unknown method {method!r}; methods are {', '.join(METHODS)}")
        bits = DEFAULT_BITS.get(method) if bits is None else bits
        if group_size == "auto":
            group_size = DEFAULT_GROUP if (method in GROUPED and bits == 4) else None
        return cls(method, bits, group_size, alpha)

    @property
    def label(self) -> str:
        """Short unique name, e.g. ``rtn-w4-g64``, ``smoothquant-w8a8-a0.5``, ``kv-per-token-4b``."""
        if self.method == "none" or self.method in GGUF_FORMATS:
            return self.method
        if self.method in KV_METHODS:
            return f"{self.method}-{self.bits}b"
        if self.method == "smoothquant":
            return f"smoothquant-a{self.alpha:g}"
        if self.method == "w8a8-naive":
            return self.method
        return f"{self.method}-w{self.bits}-" + (f"g{self.group_size}" if self.group_size else "pc")

    @property
    def family(self) -> str:
        """``"reference"``, ``"weight"``, ``"w8a8"`` or ``"kv"``."""
        if self.method == "none":
            return "reference"
        if self.method in KV_METHODS:
            return "kv"
        return "w8a8" if self.method in ("smoothquant", "w8a8-naive") else "weight"

    @property
    def outlier_aware(self) -> bool:
        """Whether the method protects large activations or Q/K values (AWQ, SmoothQuant, GPTQ's
        second-order error feedback does not count; massive-aware and per-channel KV do)."""
        return self.method in ("awq", "smoothquant", "kv-massive-aware", "kv-per-channel")


@dataclass(frozen=True)
class QuantStudyConfig:
    """A quantization study of one model (serialises to JSON).

    Attributes:
        model: Model spec (see :func:`massmech.load_model`).
        variants: The variants; the reference ``none`` is always added first.
        tasks: Task names.
        n: Examples per task.
        seed: Seed of the examples and of everything random.
        calib_tokens, eval_tokens: Natural-text tokens (BBC news, in windows of ``seq_len``) for
            calibration and for the held-out measures; the two sets of windows are disjoint.
        seq_len: Window length.
        lam: Lambda of the massive rule.
        batch_size: Sequences per forward pass in the task evaluation.
    """

    model: str = "smollm2-135m"
    variants: tuple[QuantSpec, ...] = ()
    tasks: tuple[str, ...] = DEFAULT_TASKS
    n: int = 40
    seed: int = 0
    calib_tokens: int = 8192
    eval_tokens: int = 4096
    seq_len: int = 512
    lam: float = 5.0
    batch_size: int = 8

    def __post_init__(self) -> None:
        unknown = [t for t in self.tasks if t not in TASKS]
        if unknown:
            raise QuantError(f"unknown tasks {unknown}; tasks are {', '.join(TASKS)}")
        if self.n < 1 or self.calib_tokens < self.seq_len or self.eval_tokens < 2:
            raise QuantError("need n >= 1, calib_tokens >= seq_len and eval_tokens >= 2")

    def all_variants(self) -> list[QuantSpec]:
        """``none`` first, then the configured variants, without duplicates."""
        out = [QuantSpec("none")]
        for v in self.variants:
            if v not in out:
                out.append(v)
        return out

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> QuantStudyConfig:
        raw = json.loads(text)
        raw["variants"] = tuple(QuantSpec(**v) for v in raw.get("variants", ()))
        raw["tasks"] = tuple(raw.get("tasks", DEFAULT_TASKS))
        return cls(**raw)


def study_config(model: str, grid: str = "full", **overrides: Any) -> QuantStudyConfig:
    """The study's config for ``model`` over a named grid (``full``, ``weights`` or ``kv``)."""
    if grid not in GRIDS:
        raise QuantError(f"unknown grid {grid!r}; grids are {', '.join(GRIDS)}")
    return QuantStudyConfig(model=model, variants=tuple(QuantSpec(m, b, g) for m, b, g in GRIDS[grid]), **overrides)


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
    """Full-length calibration windows, then held-out windows from later articles."""
    windows = token_windows(model, bbc_news(seed=cfg.seed), n_tokens=4 * (cfg.calib_tokens + cfg.eval_tokens), seq_len=cfg.seq_len)
    full = [w for w in windows if len(w) == cfg.seq_len]
    n_cal = -(-cfg.calib_tokens // cfg.seq_len)
    calib = full[:n_cal]
    if len(calib) < n_cal:
        raise QuantError(f"only {len(calib)} full {cfg.seq_len}-token windows for calibration; lower calib_tokens or seq_len")
    used = {id(w) for w in calib}
    held, have = [], 0
    for w in windows:
        if id(w) in used:
            continue
        held.append(w)
        have += len(w)
        if have >= cfg.eval_tokens:
            break
    return calib, held


def prepare(model: LoadedModel, cfg: QuantStudyConfig) -> StudyData:
    """Windows, the massive K dims (post-RoPE, on the calibration windows) and clean statistics."""
    calib, held = study_windows(model, cfg)
    data = StudyData(calib, held)
    cached = model.stages("k")[-1]  # the stage a KV cache holds: post-RoPE where there is RoPE
    stats = capture_stats(model, calib, sites=("k",), stages=(cached,), progress=False)
    m = stats.norm("k", cached)  # [layer, kv_head, d_head]
    data.keep_k = m > cfg.lam * m.mean(-1, keepdim=True)
    data.clean = _stats(model, held)
    return data


def _stats(model: LoadedModel, windows: Sequence[Sequence[int]], batch_size: int = 8) -> Any:
    stages = ("pre", "post") if model.has_rope else ("pre",)
    return capture_stats(model, windows, sites=("q", "k"), stages=stages, batch_size=batch_size, progress=False)


# ------------------------------------------------------------------------- weights
def _spec_key(model: str, spec: QuantSpec, cfg: QuantStudyConfig) -> str:
    blob = json.dumps({"model": model, "spec": asdict(spec), "calib_tokens": cfg.calib_tokens,
                       "seq_len": cfg.seq_len, "seed": cfg.seed, "v": CACHE_VERSION}, sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)[-60:]


def compute_weights(model: str, spec: QuantSpec, calib: Sequence[Sequence[int]], *, progress: bool = False) -> dict[str, torch.Tensor]:
    """The parameters ``spec`` changes, computed on a fresh copy of ``model`` (HF names)."""
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
        _check_groups(hf, g)
        awq(hf, calib, lambda w: rtn(w, bits, g), group_size=g, progress=progress)
    elif m == "smoothquant":
        smoothquant(hf, calib, alpha=spec.alpha)
        quantize_weights(hf, "rtn", bits=8)
    elif m == "w8a8-naive":
        quantize_weights(hf, "rtn", bits=8)
    state = hf.state_dict()
    return {k: v.detach().clone().contiguous() for k, v in state.items() if k in clean and not torch.equal(v, clean[k])}


def _check_groups(hf: Any, group_size: int | None) -> None:
    if group_size is None:
        return
    for name, mod in decoder_linears(hf).items():
        try:
            rtn(weight_matrix(mod)[:1].detach(), 4, group_size)
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
    weights = compute_weights(model, spec, calib, progress=progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda p: save_file(weights, p))
    return weights


def _params(model: LoadedModel) -> dict[str, torch.Tensor]:
    hf = model.bridge.original_model
    return {n.replace("._original_component", ""): p for n, p in hf.named_parameters(remove_duplicate=False)}


@contextlib.contextmanager
def apply_variant(model: LoadedModel, spec: QuantSpec, weights: dict[str, torch.Tensor], keep_k: torch.Tensor | None = None) -> Iterator[None]:
    """Put a variant into ``model`` for the duration of the block; everything is undone on exit.

    Args:
        model: The clean model.
        spec: The variant.
        weights: Its changed parameters (:func:`variant_weights`).
        keep_k: Massive K dims kept by ``kv-massive-aware``.
    """
    params = _params(model)
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
    from gguf import GGUFReader

    from massmech.models import _gemma3_gguf, _smollm2_gguf

    find = {"smollm2-135m": _smollm2_gguf, "gemma3-270m": lambda: _gemma3_gguf(assemble=True)[0]}.get(model.info.name)
    path = find() if find else Path(source.split(": ", 1)[-1])
    sizes: dict[str, int] = {}
    qk: set[str] = set()
    for t in GGUFReader(str(path)).tensors:
        if t.name.startswith("blk.") and t.name.endswith(".weight") and len(t.shape) == 2:
            kind = t.tensor_type.name
            sizes[kind] = sizes.get(kind, 0) + int(t.n_elements)
            if ".attn_q." in t.name or ".attn_k." in t.name:
                qk.add(kind)
    total = sum(sizes.values())
    mix = ", ".join(f"{k} {v / total:.0%}" for k, v in sorted(sizes.items(), key=lambda kv: -kv[1]))
    return f"GGUF {mix} (q/k: {'/'.join(sorted(qk))})"


def _same_as_base(method: str, base: str) -> bool:
    """A GGUF round trip into the one format every decoder matrix already has: a no-op."""
    return method in GGUF_FORMATS and base.startswith(f"GGUF {GGUF_FORMATS[method]} 100%")


def _bits(model: LoadedModel, spec: QuantSpec, weights: dict, data: StudyData) -> float:
    info = model.info
    if spec.family == "kv":  # per cached K value: scales, offsets and kept dims included
        share = float(data.keep_k.float().mean()) if (spec.method == "kv-massive-aware" and data.keep_k is not None) else 0.0
        per = info.d_head if spec.method != "kv-per-channel" else np.mean([len(w) for w in data.held])
        return (1 - share) * spec.bits + share * 16 + 2 * SCALE_BITS / per
    if spec.family == "reference":
        return float("nan")
    if spec.method in GGUF_FORMATS:
        return bits_per_weight(spec.method)
    lin = [k for k in weights if k.endswith(".weight") and weights[k].ndim == 2]
    total = sum(weights[k].numel() for k in lin)
    g = spec.group_size
    return sum(bits_per_weight("rtn", spec.bits, g, weights[k].shape[1]) * weights[k].numel() for k in lin) / max(total, 1)


def measure(model: LoadedModel, spec: QuantSpec, cfg: QuantStudyConfig, data: StudyData, *, progress: bool = False) -> pd.DataFrame:
    """Every measure of one variant, as tidy rows (see :func:`run_quant_study`)."""
    weights = variant_weights(cfg.model, spec, cfg, data.calib, progress=progress)
    if "base" not in data.extra:
        data.extra["base"] = base_format(model)
    base = data.extra["base"]
    common = {"model": model.info.name, "variant": spec.label, "method": spec.method, "family": spec.family,
              "bits": spec.bits, "group_size": spec.group_size, "alpha": spec.alpha if spec.method == "smoothquant" else None,
              "outlier_aware": spec.outlier_aware, "base": base, "same_as_base": _same_as_base(spec.method, base)}
    rows = []
    params = {k: p.detach() for k, p in _params(model).items()}
    num = sum(float((v.double() - params[k].double()).pow(2).sum()) for k, v in weights.items())
    den = sum(float(params[k].double().pow(2).sum()) for k in weights)
    moved = spec.method in ("awq", "smoothquant")  # smoothing rescales weights by design
    rows.append({"measure": "weight_rel_error", "value": float("nan") if moved else ((num / den) ** 0.5 if den else 0.0)})
    rows.append({"measure": "bits_per_value", "value": _bits(model, spec, weights, data)})
    torch.manual_seed(cfg.seed)
    # KV fake-quant sees whole sequences: one per pass, so padding never enters a per-channel range
    bs = 1 if spec.family == "kv" else cfg.batch_size
    with apply_variant(model, spec, weights, data.keep_k):
        stats = _stats(model, data.held, batch_size=bs)
        pres = massive_preservation(data.clean, stats, lam=cfg.lam)
        for r in pres.itertuples(index=False):
            for meas in ("recall", "rel_error_massive", "rel_error_other"):
                rows.append({"measure": meas, "site": r.site, "stage": r.stage, "value": float(getattr(r, meas)), "n": int(r.n_massive)})
        ppl = perplexity(model, data.held, batch_size=bs)
        rows.append({"measure": "perplexity", "value": ppl["perplexity"], "n": ppl["n_tokens"]})
        rows.append({"measure": "nll", "value": ppl["nll"], "n": ppl["n_tokens"]})
        for name in cfg.tasks:
            task = get_task(name)
            df = evaluate(model, task, {"baseline": None}, n=cfg.n, seed=cfg.seed, batch_size=bs, progress=False)
            s = summarize(df, seed=cfg.seed).iloc[0]
            rows.append({"measure": "accuracy", "task": name, "kind": task.kind, "value": float(s.accuracy),
                         "ci_low": float(s.ci_low), "ci_high": float(s.ci_high), "n": int(s.n)})
    out = pd.DataFrame([common | r for r in rows])
    for col in ("site", "stage", "task", "kind"):
        out[col] = out[col] if col in out else None
    for col in ("ci_low", "ci_high", "n"):
        out[col] = out[col] if col in out else np.nan
    return out[[*common, "measure", "site", "stage", "task", "kind", "value", "ci_low", "ci_high", "n"]]


def summary_json(table: pd.DataFrame, variant: str) -> dict:
    """The CLI's JSON for one variant: ``massive_recall`` (mean over Q/K pre/post sites that have
    massive values), ``preservation``, ``perplexity``, ``bits_per_value`` and
    ``tasks -> name -> {accuracy, ci_low, ci_high, n, kind}``."""
    t = table[table.variant == variant]
    if t.empty:
        raise QuantError(f"no rows for variant {variant!r}")
    first = t.iloc[0]
    rec = t[t.measure == "recall"]
    get = lambda m: float(t[t.measure == m].value.iloc[0])  # noqa: E731
    pres = {}
    for (site, stage), g in t[t.measure.isin(["recall", "rel_error_massive", "rel_error_other"])].groupby(["site", "stage"], sort=False):
        pres[f"{site}_{stage}"] = {r.measure: _num(r.value) for r in g.itertuples()} | {"n_massive": int(g.n.iloc[0])}
    tasks = {r.task: {"accuracy": r.value, "ci_low": r.ci_low, "ci_high": r.ci_high, "n": int(r.n), "kind": r.kind}
             for r in t[t.measure == "accuracy"].itertuples()}
    return {
        "model": first.model, "variant": variant, "method": first.method, "bits": _num(first.bits),
        "group_size": _num(first.group_size), "alpha": _num(first.alpha), "base": first.base,
        "same_as_base": bool(first.same_as_base),
        "massive_recall": _num(rec.value.dropna().mean()) if rec.value.notna().any() else None,
        "preservation": pres, "perplexity": get("perplexity"), "bits_per_value": _num(get("bits_per_value")),
        "weight_rel_error": _num(get("weight_rel_error")), "tasks": tasks,
    }


def _num(x: Any) -> Any:
    """A JSON number: None for missing/NaN, int for whole numbers, else float."""
    if x is None:
        return None
    f = float(x)
    if np.isnan(f):
        return None
    return int(f) if f.is_integer() else f


# ----------------------------------------------------------------------------- runner
def run_quant_study(cfg: QuantStudyConfig, out: str | os.PathLike, *, model: LoadedModel | None = None, progress: bool = True) -> pd.DataFrame:
    """Run (or resume) a study into ``out/``; returns the results table.

    Args:
        cfg: The study.
        out: Its folder.
        model: ``load_model(cfg.model)`` if already loaded (saves a load).
        progress: Progress bar over the variants.

    Writes ``out/cells/<variant>.parquet`` as each variant finishes, ``out/results.parquet`` and
    ``.csv`` (one row per model x variant x measure; columns ``model, variant, method, family,
    bits, group_size, alpha, outlier_aware, base, same_as_base, measure, site, stage, task, kind,
    value, ci_low, ci_high, n``) and ``out/manifest.json``. Finished variants are not recomputed
    (a changed config starts a new cell, the file name hashes it).
    """
    check_out(out, "quant-study", resume=True)  # before any work; created once the inputs pass
    variants = cfg.all_variants()  # validated by QuantSpec
    for name in cfg.tasks:
        get_task(name).examples(cfg.n, cfg.seed)  # n beyond the data: error before any work
    lm = model or load_model(cfg.model)  # the weights variant_weights starts from (tiny models: seed 0)
    for spec in variants:  # a group size or layout that does not fit: error before any work
        if spec.group_size is not None:
            _check_groups(lm.bridge.original_model, spec.group_size)
        if spec.method in ("awq", "smoothquant"):
            for block in decoder_blocks(lm.bridge.original_model):
                block_maps(block, awq=spec.method == "awq")
    out = open_study_dir(out, "quant-study")
    cells = out / "cells"
    data: StudyData | None = None
    frames = []
    for spec in tqdm(variants, desc=f"quant study {cfg.model}", disable=not progress):
        key = hashlib.sha1(json.dumps({"spec": asdict(spec), "cfg": asdict(replace(cfg, variants=()))}, sort_keys=True).encode()).hexdigest()[:12]
        path = cells / f"{spec.label}-{key}.parquet"
        if path.exists():
            frames.append(pd.read_parquet(path))
            continue
        data = data or prepare(lm, cfg)
        table = measure(lm, spec, cfg, data, progress=progress)
        cells.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda p, t=table: t.to_parquet(p, index=False))
        frames.append(table)
    results = pd.concat(frames, ignore_index=True)
    base = base_format(lm)  # a property of the model: set on every row here
    results["base"] = base
    results["same_as_base"] = results.method.map(lambda m: _same_as_base(m, base))
    for name, write in (("results.parquet", lambda p: results.to_parquet(p, index=False)),
                        ("results.csv", lambda p: results.to_csv(p, index=False))):
        atomic_write(out / name, write)
    finish_study_dir(out, "quant-study", manifest(cfg, model_info=lm.info_dict(), seed=cfg.seed))
    return results


def wide(table: pd.DataFrame) -> pd.DataFrame:
    """One row per variant: perplexity, bits, mean K/Q recall, rel. errors and task accuracies."""
    rows = []
    for (model, variant), t in table.groupby(["model", "variant"], sort=False):
        row: dict[str, Any] = {"model": model, "variant": variant, "base": t.base.iloc[0], "same_as_base": bool(t.same_as_base.iloc[0])}
        for meas in ("bits_per_value", "weight_rel_error", "perplexity"):
            row[meas] = float(t[t.measure == meas].value.iloc[0])
        for r in t[t.measure.isin(["recall", "rel_error_massive", "rel_error_other"])].itertuples():
            row[f"{r.measure}_{r.site}_{r.stage}"] = r.value
        acc = t[t.measure == "accuracy"]
        for r in acc.itertuples():
            row[r.task] = r.value
        for kind in ("parametric", "contextual"):
            row[f"{kind}_mean"] = float(acc[acc.kind == kind].value.mean()) if (acc.kind == kind).any() else np.nan
        rows.append(row)
    return pd.DataFrame(rows)
