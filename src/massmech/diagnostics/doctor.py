"""Self-check of a model: bridge == plain HF, RoPE spec == the model's rotation, hooks fire.

``massmech doctor --model M --json`` prints the verdict of :func:`doctor`.
"""

from __future__ import annotations

import copy
import os
from dataclasses import asdict
from typing import Any

import torch

from massmech.core import decoder
from massmech.core.bridge import boot
from massmech.core.capture import capture_stats
from massmech.core.catalog import DEFAULT_MODEL
from massmech.core.loading import check_device, load_hf, resolve_dtype
from massmech.core.models import LoadedModel, wrap
from massmech.diagnostics.verify_rope import verify_rope
from massmech.errors import ConfigError, RopeError

DOCTOR_TEXT = (
    "The history of the city goes back more than two thousand years. Its old harbour, once the "
    "busiest on the coast, now shelters fishing boats and a few ferries, while the new port lies "
    "ten kilometres to the south."
)


FP32_LOGIT_TOL = 1e-4  # doctor's fixed fp32 tolerance, and the floor of every default tolerance
LOGIT_TOL_RULE = "max(1e-4, u * (2 * n_layers + 2) * max|logit|)"


def unit_roundoff(dtype: str | torch.dtype) -> float:
    """Unit roundoff ``u`` of a float dtype (half its machine epsilon): the largest relative error of
    one rounding to nearest.

    >>> unit_roundoff("bfloat16") == 2**-8, unit_roundoff(torch.float16) == 2**-11, unit_roundoff("float32") == 2**-24
    (True, True, True)
    """
    return torch.finfo(resolve_dtype(dtype)).eps / 2


def logit_tolerance(dtype: str | torch.dtype, n_layers: int, logit_scale: float) -> float:
    """The default ``logit_tol`` of :func:`doctor`: a rounding budget per residual write.

    Rule: ``max(1e-4, u * (2 * n_layers + 2) * logit_scale)``, with ``u`` the dtype's unit
    roundoff (:func:`unit_roundoff`: 2^-24 fp32, 2^-11 fp16, 2^-8 bf16) and ``logit_scale`` the
    largest |logit| of the reference forward.

    Why: the bridge and plain Hugging Face run the same network in the same dtype but may round
    at different points (e.g. the bridge's own attention against SDPA). Each write into the
    residual stream (two per layer: attention and MLP; plus the embedding, and the final norm
    with the unembedding: ``2 * n_layers + 2`` in all) may move the result by about one rounding,
    ``u`` relative to the stream; in the worst case these add up along the depth, and the logits
    carry that relative error at their own scale. A real mismatch (a wrong weight, a missed bias,
    a hook that changes values) moves the logits by far more. In fp32 the budget stays below the
    floor 1e-4, the fixed tolerance doctor always used there; in bf16 it is about 0.016 for a
    2-layer model with logits up to 0.66, and about 1.3 for a 32-layer one with logits up to 5.

    >>> logit_tolerance("float32", 16, 1.0)
    0.0001
    >>> round(logit_tolerance("bfloat16", 2, 0.66), 4), round(logit_tolerance("bfloat16", 32, 5.0), 3)
    (0.0155, 1.289)
    """
    return max(FP32_LOGIT_TOL, unit_roundoff(dtype) * (2 * n_layers + 2) * float(logit_scale))


def _subject(
    model: Any, tokenizer: Any, dtype: str | torch.dtype | None, device: str | None
) -> tuple[LoadedModel, Any, str | None]:
    """The model to check, a pristine HF reference of it (or ``None``), and why none."""
    if isinstance(model, (str, os.PathLike)):
        check_device(device)
        hf, tok, name, source = load_hf(model, dtype=dtype or torch.float32)
        reference = copy.deepcopy(hf)  # the bridge wraps `hf`; keep an untouched HF twin
        if device is not None:
            hf.to(device), reference.to(device)
        return LoadedModel(boot(hf, tok, name), tok, name, source, spec=str(model)), reference, None
    if decoder.is_hf_model(model):
        if tokenizer is None:
            raise ConfigError("doctor(hf_model) needs its tokenizer: doctor(hf_model, tokenizer)")
        # the user's model is the reference and is only run; the bridge wraps a copy
        return wrap(copy.deepcopy(model), tokenizer), model, None
    if not isinstance(model, LoadedModel):
        model = wrap(model, tokenizer)  # a TransformerBridge (or a clear TypeError)
    if model.spec is None:
        return model, None, (
            "no pristine copy of the Hugging Face model to compare with: pass the spec or the HF "
            "model (doctor(hf_model, tokenizer)) to run this check"
        )
    kw = model.load_kwargs
    if kw.get("device_map") is None:
        reference = load_hf(model.spec, dtype=kw.get("dtype", "float32"), seed=kw.get("seed", 0))[0]
        return model, reference.to(model.info.device), None
    # a sharded model: its reference is sharded the same way (never gathered on one device)
    import tempfile

    offload = tempfile.mkdtemp(prefix="massmech-doctor-")
    reference = load_hf(model.spec, dtype=kw.get("dtype", "float32"), seed=kw.get("seed", 0),
                        device_map=kw["device_map"], offload_folder=offload)[0]
    return model, reference, None


def _check_rope_config(model: Any, checks: dict, errors: dict) -> None:
    """``rope_matches_config``: the spec read from the cos/sin tables equals the one the model's
    Hugging Face config describes (relative 1e-5 per frequency in fp32; two roundings of the
    model's dtype in half precision, where the tables hold rounded frequencies)."""
    import numpy as np

    try:
        ref = decoder.config_rope(model)
    except RopeError as err:
        checks["rope_matches_config"] = False
        errors["rope_matches_config"] = str(err)
        return
    got = model.rope
    # the model keeps its frequencies in its own dtype: each may be off by one rounding (x2 margin)
    rtol = max(1e-5, 2 * unit_roundoff(model.info.dtype))
    same = (got.rotary_dim == ref.rotary_dim and got.layout == ref.layout and got.n_layers == ref.n_layers
            and np.allclose(np.array(got.inv_freq), np.array(ref.inv_freq), rtol=rtol, atol=0))
    checks["rope_matches_config"] = bool(same)
    if not same:
        errors["rope_matches_config"] = f"the model's tables give {got}, its config {ref}"


def _check_logits(model: LoadedModel, reference: Any, why_not: str | None, ids: torch.Tensor,
                  logit_tol: float | None, checks: dict, errors: dict, skipped: dict) -> tuple[float | None, float, dict]:
    """``logits_match``: bridge vs the pristine Hugging Face model; returns the largest difference
    (``None`` without a reference), the tolerance and the tolerance's rule with its inputs."""
    with torch.inference_mode():
        bridge_logits = model.logits(ids).float()
        hf_logits = None if reference is None else decoder.lm_logits(reference, ids).float()
    # the tolerance's scale: the pristine model's logits (the bridge's when there is none)
    scale = float((bridge_logits if hf_logits is None else hf_logits).abs().max())
    rule = {"rule": LOGIT_TOL_RULE, "unit_roundoff": unit_roundoff(model.info.dtype),
            "n_layers": model.info.n_layers, "logit_scale": scale}
    if logit_tol is None:
        logit_tol = logit_tolerance(model.info.dtype, model.info.n_layers, scale)
    else:
        rule["rule"] = "given"
    if hf_logits is None:
        skipped["logits_match"] = why_not
        return None, logit_tol, rule
    max_diff = float((bridge_logits - hf_logits).abs().max())
    checks["logits_match"] = max_diff <= logit_tol
    if not checks["logits_match"]:
        errors["logits_match"] = f"max |bridge - HF| = {max_diff:.3e} > {logit_tol:.3e}"
    return max_diff, logit_tol, rule


def _check_rope(model: LoadedModel, ids: torch.Tensor, checks: dict, errors: dict, skipped: dict) -> tuple[list[float], list[float]]:
    """``rope_verified`` (or, without a post-RoPE hook, ``rope_matches_config``); returns the
    spec's bases and the bases fitted to the observed rotation, per layer."""
    try:
        report = verify_rope(model, ids, raise_on_failure=False)
    except RopeError as err:
        if "post" in model.stages("q"):
            checks["rope_verified"] = False
            errors["rope_verified"] = str(err)
        else:  # no post-RoPE hook (Phi-3, GPT-NeoX): the rotation cannot be observed; check the config
            skipped["rope_verified"] = str(err)
            _check_rope_config(model, checks, errors)
        return [], []
    checks["rope_verified"] = report.ok
    if not report.ok:
        errors["rope_verified"] = "; ".join(
            f"layer {c.layer} {c.site}: angle {c.max_angle_error:.2e}, norm {c.max_norm_error:.2e}"
            for c in report.failures()[:5]
        )
    return list(report.spec_bases), list(report.fitted_bases)


def doctor(
    model: Any = DEFAULT_MODEL,
    tokenizer: Any = None,
    *,
    logit_tol: float | None = None,
    dtype: str | torch.dtype | None = None,
    device: str | None = None,
) -> dict:
    """Run the equivalence checks on a model and return a JSON-ready verdict.

    Args:
        model: A spec (see :func:`massmech.load_model`), a :class:`LoadedModel`, a Hugging Face
            causal LM (with ``tokenizer``; it is not modified: the bridge wraps a copy) or a
            TransformerLens bridge. A wrapped model loaded by neither route has no pristine
            reference, so ``logits_match`` is reported under ``skipped`` with the reason.
        tokenizer: The tokenizer of a Hugging Face model.
        logit_tol: Largest allowed |bridge - HF| logit difference; default
            :func:`logit_tolerance` of the model's dtype, depth and largest reference logit (1e-4
            in fp32; in bf16/fp16 it grows with the number of layers). Reported as ``logit_tol``,
            with the rule and its inputs as ``logit_tol_rule``.
        dtype: Weight dtype of a model loaded here from a spec (default fp32).
        device: Device of a model loaded here from a spec (default CPU).

    Checks: ``logits_match`` (bridge vs a pristine copy of the HF model, fp32, eager attention,
    max |diff| <= ``logit_tol``), ``kv_cache`` (the last token decoded with the KV cache of the
    others gives the full forward's logits), ``hooks_fire`` (every Q/K/V site at every layer fires exactly
    once per forward), ``rope_verified`` (RoPE spec matches the rotation applied to Q and K;
    absent for models without RoPE). Where the bridge exposes no post-RoPE hook (Phi-3, GPT-NeoX)
    the rotation cannot be observed: ``rope_verified`` goes to ``skipped`` with the reason and
    ``rope_matches_config`` checks the spec against the model's config instead.

    Returns:
        Dict with ``ok``, ``model``, ``device``, ``dtype``, ``max_abs_logit_diff`` (``None`` if
        skipped), ``logit_tol``, ``logit_tol_rule`` (``rule``, ``unit_roundoff``, ``n_layers``,
        ``logit_scale``; ``rule`` is ``"given"`` when ``logit_tol`` was passed),
        ``skipped`` (check -> why it could not run), ``rope_bases`` (one per layer;
        empty without RoPE), ``rope_fitted_bases``, ``rope`` (layout, rotary_dim), ``checks``
        (name -> passed) and ``errors`` (name -> message) for failed checks.

    >>> verdict = doctor("tiny-llama")
    >>> verdict["ok"], verdict["checks"]["rope_verified"], verdict["skipped"]
    (True, True, {})
    """
    model, reference, why_not = _subject(model, tokenizer, None if dtype is None else resolve_dtype(dtype), device)
    checks: dict[str, bool] = {}
    errors: dict[str, str] = {}
    skipped: dict[str, str] = {}

    ids = torch.tensor([model.tokenize(DOCTOR_TEXT)[0]], device=model.info.device)
    max_diff, logit_tol, rule = _check_logits(model, reference, why_not, ids, logit_tol, checks, errors, skipped)
    cache_diff = decoder.cached_step_error(model, ids)
    checks["kv_cache"] = cache_diff <= max(logit_tol, 1e-3)
    if not checks["kv_cache"]:
        errors["kv_cache"] = (
            f"a cached decode step differs from the full forward by {cache_diff:.3e}: "
            "generation through the bridge would ignore or garble earlier tokens"
        )
    try:
        capture_stats(model, ids, progress=False)
        checks["hooks_fire"] = True
    except Exception as err:  # report, do not crash: the verdict is the product
        checks["hooks_fire"] = False
        errors["hooks_fire"] = str(err)
    rope_bases, fitted = _check_rope(model, ids, checks, errors, skipped) if model.has_rope else ([], [])
    spec = model.rope_or_none
    return {
        "ok": all(checks.values()),
        "model": asdict(model.info),
        "device": model.info.device,
        "dtype": model.info.dtype,
        "max_abs_logit_diff": max_diff,
        "logit_tol": logit_tol,
        "logit_tol_rule": rule,
        "kv_cache_logit_diff": cache_diff,
        "rope_bases": rope_bases,
        "rope_fitted_bases": fitted,
        "rope": None if spec is None else {"layout": spec.layout, "rotary_dim": spec.rotary_dim, "n_pairs": spec.n_pairs},
        "checks": checks,
        "errors": errors,
        "skipped": skipped,
    }
