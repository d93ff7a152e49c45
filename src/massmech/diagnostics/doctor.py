"""Self-check of a model: bridge == plain HF, RoPE spec == the model's rotation, hooks fire.

``massmech doctor --model M --json`` prints the verdict of :func:`doctor`.
"""

from __future__ import annotations

import copy
import inspect
import os
from dataclasses import asdict
from typing import Any

import torch

from massmech.core.bridge import boot, hf_model
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


def kv_cache_error(model: LoadedModel, ids: torch.Tensor) -> float:
    """Max |logit| difference between decoding the last token with a KV cache and a full forward.

    Runs the Hugging Face model inside the bridge (every bridge component is in the path).
    """
    hf = hf_model(model)
    ids = ids.to(next(hf.parameters()).device)
    # transformers >= 5.2x names the cache argument `cache` (`past_key_values` is deprecated)
    name = "cache" if "cache" in inspect.signature(hf.forward).parameters else "past_key_values"
    with torch.inference_mode():
        full = hf(ids).logits[:, -1].float()
        prefix = hf(ids[:, :-1], use_cache=True)
        cache = getattr(prefix, "cache", None) or prefix.past_key_values
        step = hf(ids[:, -1:], **{name: cache}, use_cache=True).logits[:, -1].float()
    return float((step - full).abs().max())


def _subject(
    model: Any, tokenizer: Any, dtype: str | torch.dtype | None, device: str | None
) -> tuple[LoadedModel, Any, str | None]:
    """The model to check, a pristine HF reference of it (or ``None``), and why none."""
    from transformers import PreTrainedModel

    if isinstance(model, (str, os.PathLike)):
        check_device(device)
        hf, tok, name, source = load_hf(model, dtype=dtype or torch.float32)
        reference = copy.deepcopy(hf)  # the bridge wraps `hf`; keep an untouched HF twin
        if device is not None:
            hf.to(device), reference.to(device)
        return LoadedModel(boot(hf, tok, name), tok, name, source, spec=str(model)), reference, None
    if isinstance(model, PreTrainedModel):
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
    reference = load_hf(model.spec, dtype=kw.get("dtype", "float32"), seed=kw.get("seed", 0))[0]
    return model, reference.to(model.info.device), None


def _check_rope_config(model: Any, checks: dict, errors: dict) -> None:
    """``rope_matches_config``: the spec read from the cos/sin tables equals the one the model's
    Hugging Face config describes (relative 1e-5 per frequency)."""
    import numpy as np

    from massmech.core.bridge import hf_model
    from massmech.core.rope import RopeSpec

    try:
        ref = RopeSpec.from_hf_config(hf_model(model).config)
    except RopeError as err:
        checks["rope_matches_config"] = False
        errors["rope_matches_config"] = str(err)
        return
    got = model.rope
    same = (got.rotary_dim == ref.rotary_dim and got.layout == ref.layout and got.n_layers == ref.n_layers
            and np.allclose(np.array(got.inv_freq), np.array(ref.inv_freq), rtol=1e-5, atol=0))
    checks["rope_matches_config"] = bool(same)
    if not same:
        errors["rope_matches_config"] = f"the model's tables give {got}, its config {ref}"


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
        logit_tol: Largest allowed |bridge - HF| logit difference (default 1e-4 in fp32, 5e-2 in
            half precision); reported as ``logit_tol``.
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
        Dict with ``ok``, ``model``, ``max_abs_logit_diff`` (``None`` if skipped), ``logit_tol``,
        ``skipped`` (check -> why it could not run), ``rope_bases`` (one per layer;
        empty without RoPE), ``rope_fitted_bases``, ``rope`` (layout, rotary_dim), ``checks``
        (name -> passed) and ``errors`` (name -> message) for failed checks.

    >>> verdict = doctor("tiny-llama")
    >>> verdict["ok"], verdict["checks"]["rope_verified"], verdict["skipped"]
    (True, True, {})
    """
    model, reference, why_not = _subject(model, tokenizer, None if dtype is None else resolve_dtype(dtype), device)
    if logit_tol is None:
        logit_tol = 1e-4 if model.info.dtype == "float32" else 5e-2
    checks: dict[str, bool] = {}
    errors: dict[str, str] = {}
    skipped: dict[str, str] = {}

    ids = torch.tensor([model.tokenize(DOCTOR_TEXT)[0]], device=model.info.device)
    max_diff = None
    if reference is None:
        skipped["logits_match"] = why_not
    else:
        with torch.inference_mode():
            bridge_logits = model.bridge(ids, return_type="logits").float()
            hf_logits = reference(ids).logits.float()
        max_diff = float((bridge_logits - hf_logits).abs().max())
        checks["logits_match"] = max_diff <= logit_tol
        if not checks["logits_match"]:
            errors["logits_match"] = f"max |bridge - HF| = {max_diff:.3e} > {logit_tol:.0e}"

    cache_diff = kv_cache_error(model, ids)
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

    rope_bases: list[float] = []
    fitted: list[float] = []
    if model.has_rope:
        try:
            report = verify_rope(model, ids, raise_on_failure=False)
            rope_bases, fitted = list(report.spec_bases), list(report.fitted_bases)
            checks["rope_verified"] = report.ok
            if not report.ok:
                errors["rope_verified"] = "; ".join(
                    f"layer {c.layer} {c.site}: angle {c.max_angle_error:.2e}, norm {c.max_norm_error:.2e}"
                    for c in report.failures()[:5]
                )
        except RopeError as err:
            if "post" in model.stages("q"):
                checks["rope_verified"] = False
                errors["rope_verified"] = str(err)
            else:  # no post-RoPE hook (Phi-3, GPT-NeoX): the rotation cannot be observed; check the config
                skipped["rope_verified"] = str(err)
                _check_rope_config(model, checks, errors)
    spec = model.rope_or_none
    return {
        "ok": all(checks.values()),
        "model": asdict(model.info),
        "max_abs_logit_diff": max_diff,
        "logit_tol": logit_tol,
        "kv_cache_logit_diff": cache_diff,
        "rope_bases": rope_bases,
        "rope_fitted_bases": fitted,
        "rope": None if spec is None else {"layout": spec.layout, "rotary_dim": spec.rotary_dim, "n_pairs": spec.n_pairs},
        "checks": checks,
        "errors": errors,
        "skipped": skipped,
    }
