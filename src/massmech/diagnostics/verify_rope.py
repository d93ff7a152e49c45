"""Check a :class:`~massmech.core.rope.RopeSpec` against the rotation the model really applies.

:func:`verify_rope` captures Q and K before and after RoPE and checks, pair by pair, that the
post-RoPE values equal the pre-RoPE values rotated by the spec's angles (and that dims outside
the rotary part are untouched).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from massmech._notebook import distinct, html_table
from massmech.core.models import LoadedModel
from massmech.core.rope import RopeSpec, fit_base
from massmech.errors import RopeError


@dataclass(frozen=True)
class RopeCheck:
    """Result of :func:`verify_rope` for one layer and site (q or k)."""

    layer: int
    site: str
    max_angle_error: float  # radians: applied rotation vs the spec, worst pair/position with energy
    max_norm_error: float  # relative: per-pair norm after rotation vs scale * norm before
    unrotated_max_diff: float  # max |post - pre| on dims outside rotary_dim (partial rotary)
    fitted_freq: tuple[float, ...]  # fitted from the model's rotation, per pair (NaN: no energy)

    def passed(self, angle_tol: float, norm_tol: float) -> bool:
        return (
            self.max_angle_error <= angle_tol
            and self.max_norm_error <= norm_tol
            and self.unrotated_max_diff <= norm_tol
        )


@dataclass(frozen=True, repr=False)
class RopeReport:
    """Outcome of :func:`verify_rope`: per-layer checks and the recovered bases."""

    ok: bool
    checks: tuple[RopeCheck, ...]
    spec_bases: tuple[float, ...]
    fitted_bases: tuple[float, ...]
    angle_tol: float
    norm_tol: float

    def failures(self) -> list[RopeCheck]:
        return [c for c in self.checks if not c.passed(self.angle_tol, self.norm_tol)]

    def _fields(self) -> dict[str, object]:
        worst = max((c.max_angle_error for c in self.checks), default=float("nan"))
        return {"ok": self.ok, "checks": len(self.checks), "failures": len(self.failures()),
                "max_angle_error": f"{worst:.2g}", "bases": distinct(self.spec_bases)}

    def __repr__(self) -> str:
        return "RopeReport(" + ", ".join(f"{k}={v}" for k, v in self._fields().items()) + ")"

    def _repr_html_(self) -> str:
        rows = self._fields() | {"fitted bases": distinct(self.fitted_bases),
                                 "angle_tol": f"{self.angle_tol:g} rad", "norm_tol": f"{self.norm_tol:g}"}
        return html_table("RopeReport: " + ("passed" if self.ok else "FAILED"), rows)


def _pairs(x: Tensor, spec: RopeSpec) -> Tensor:
    """``[..., d_head]`` -> complex ``[..., n_pairs]`` (first dim of a pair real, second imaginary)."""
    idx = spec.pair_index().to(x.device)
    xp = x[..., idx].double()  # [..., n_pairs, 2]
    return torch.complex(xp[..., 0], xp[..., 1])


def _check_site(spec: RopeSpec, layer: int, site: str, pre: torch.Tensor, post: torch.Tensor,
                pos: torch.Tensor) -> tuple[RopeCheck, torch.Tensor]:
    """The check of one (layer, site) from its pre- and post-RoPE activations
    (``[batch, pos, head, d_head]``), and the frequency fitted to each pair's rotation."""
    zp, zq = _pairs(pre, spec), _pairs(post, spec)  # [batch, pos, head, n_pairs]
    scale = spec.scaling[layer]
    # Rotation angle per (pos, pair), pooled over batch and heads, weighted by |z|^2.
    prod = (zq * zp.conj()).sum(dim=(0, 2))  # [pos, n_pairs]
    # A pair with (near) zero energy has no defined angle (QK-norm can zero dims).
    defined = prod.abs() > 1e-10 * prod.abs().max()
    angle = torch.angle(prod)
    unwrapped = torch.from_numpy(np.unwrap(angle.numpy(), axis=0))
    fitted = (pos[:, None] * unwrapped).sum(0) / (pos * pos).sum()  # [n_pairs]
    fitted[~defined.all(0)] = float("nan")
    expected = pos[:, None] * torch.tensor(spec.frequencies(layer))[None, :]
    diff = torch.remainder(angle - expected + math.pi, 2 * math.pi) - math.pi
    diff = torch.where(defined, diff, torch.zeros_like(diff))
    norm_pre, norm_post = zp.abs(), zq.abs()
    denom = norm_pre.max().clamp_min(1e-30)
    norm_err = ((norm_post - scale * norm_pre).abs().max() / (scale * denom)).item()
    if spec.rotary_dim < spec.d_head:
        unrot = (post[..., spec.rotary_dim :] - pre[..., spec.rotary_dim :]).abs().max()
        unrot_err = (unrot / pre.abs().max().clamp_min(1e-30)).item()
    else:
        unrot_err = 0.0
    check = RopeCheck(layer=layer, site=site, max_angle_error=float(diff.abs().max()), max_norm_error=norm_err,
                      unrotated_max_diff=unrot_err, fitted_freq=tuple(float(v) for v in fitted))
    return check, fitted


def verify_rope(
    model: LoadedModel,
    tokens: Tensor | None = None,
    *,
    angle_tol: float | None = None,
    norm_tol: float | None = None,
    raise_on_failure: bool = True,
) -> RopeReport:
    """Check the model's RoPE spec against the rotation the model really applies to Q and K.

    From the pre-RoPE site (``hook_q``/``hook_k``, or ``hook_q_normed``/``hook_k_normed`` with
    QK-norm) and the post-RoPE site (``hook_rot_q``/``hook_rot_k``) on one prompt, it recovers
    each pair's rotation angle at every position, fits its frequency by least squares, and
    checks that (a) the angle is ``position * spec frequency`` at every position, (b) each pair's
    norm is preserved (times the table amplitude), (c) unrotated dims are untouched.

    Args:
        model: A loaded RoPE model.
        tokens: Token ids ``[1, pos]``; defaults to 64 fixed ids.
        angle_tol: Largest allowed angle error in radians (default 1e-3 for fp32 models,
            0.05 for fp16/bf16).
        norm_tol: Largest allowed relative norm error (default 1e-4 for fp32, 0.02 for
            fp16/bf16).
        raise_on_failure: Raise :class:`RopeError` when a check fails (default) instead of
            only reporting it.

    Returns:
        A :class:`RopeReport`.
    """
    spec = model.rope  # raises on a model without RoPE
    for site in ("q", "k"):
        if "post" not in model.stages(site):
            raise RopeError(
                f"cannot verify RoPE on {model.info.name}: the bridge exposes no post-RoPE hook for "
                f"{site!r} on this architecture"
            )
    low_precision = model.info.dtype in ("float16", "bfloat16")
    angle_tol = angle_tol if angle_tol is not None else (0.05 if low_precision else 1e-3)
    norm_tol = norm_tol if norm_tol is not None else (0.02 if low_precision else 1e-4)
    if tokens is None:
        tokens = model.probe_tokens(64)
    acts = model.run_sites(tokens, [(s, st) for s in ("q", "k") for st in ("pre", "post")])
    pos = torch.arange(tokens.shape[-1], dtype=torch.float64)
    checks: list[RopeCheck] = []
    fitted_bases: list[float] = []
    for layer in range(model.info.n_layers):
        freqs_layer: list[np.ndarray] = []
        for site in ("q", "k"):
            pre = acts[(site, "pre", layer)]  # [batch, pos, head, d_head]
            post = acts[(site, "post", layer)]
            check, fitted = _check_site(spec, layer, site, pre, post, pos)
            checks.append(check)
            freqs_layer.append(fitted.numpy())
        q_fit, k_fit = freqs_layer  # average q and k where both are defined
        both = np.where(np.isnan(q_fit), k_fit, np.where(np.isnan(k_fit), q_fit, (q_fit + k_fit) / 2))
        fitted_bases.append(fit_base(both, spec.rotary_dim))
    report = RopeReport(
        ok=all(c.passed(angle_tol, norm_tol) for c in checks),
        checks=tuple(checks),
        spec_bases=tuple(spec.bases()),
        fitted_bases=tuple(fitted_bases),
        angle_tol=angle_tol,
        norm_tol=norm_tol,
    )
    if raise_on_failure and not report.ok:
        worst = report.failures()[:5]
        lines = "; ".join(
            f"layer {c.layer} {c.site}: angle err {c.max_angle_error:.2e} rad, "
            f"norm err {c.max_norm_error:.2e}, unrotated diff {c.unrotated_max_diff:.2e}"
            for c in worst
        )
        raise RopeError(f"RoPE spec disagrees with {model.info.name}'s rotation: {lines}")
    return report
