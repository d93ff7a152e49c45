"""Which dims a disruption replaces, and with what: pure functions of one site's activations.

:func:`select` is the whole rule of a :class:`~massmech.causal.disruption.Disruption` at one
(site, stage, layer) for the rows that carry it: the massive dims (``lambda``/``topk`` on the
prompt's ``M``, or a calibration's), restricted to chosen heads, their replacement values, and,
for a control, the dims it picks instead (:func:`control_dims`). Nothing here holds state or
touches the model; :class:`~massmech.causal.intervention.Intervention` calls it from its hooks.
"""

from __future__ import annotations

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from massmech.causal.controls import counter_uniform, matched_dims, pooled_values
from massmech.causal.disruption import Disruption
from massmech.causal.vocabulary import MATCHED_CONTROLS
from massmech.core.detect import massive_mask
from massmech.core.frequency import equal_count_bands
from massmech.core.qkvstats import QKVStats
from massmech.core.rotation import Rotation
from massmech.errors import DisruptionError


def select(
    c: Disruption,
    x: Float[Tensor, "rows pos head d"],
    mask: Bool[Tensor, "rows pos"],
    *,
    site: str,
    stage: str,
    layer: int,
    seeds: Int[Tensor, " rows"],
    pair: Int[Tensor, " d"] | None = None,
    calibration: QKVStats | None = None,
    rotation: Rotation | None = None,
) -> tuple[Bool[Tensor, "rows head d"], Float[Tensor, "rows head d"]]:
    """The dims ``c`` replaces in each row and head, and their replacement values.

    Under ``replace="rotated_mean"`` the values are the prompt's means *before* RoPE (``rotation``
    undoes the rotation of ``x``); ``rotation.apply(value)`` places them at each position.

    Args:
        c: The disruption.
        x: The rows' activations at one site.
        mask: True at each row's prompt tokens: ``M`` and the means are taken there only.
        site: ``q`` or ``k``.
        stage: ``pre`` or ``post`` RoPE.
        layer: The layer (the calibration's row, the random controls' stream).
        seeds: Each row's stable id (the example's uid): random controls draw from it, so a row's
            dims never depend on its batch-mates.
        pair: RoPE pair of each dim (``-1``: not rotated); needed by the band controls.
        calibration: Statistics of ``selection="calibration"`` / ``replace="calib_mean"``.
        rotation: The rows' RoPE tables in this pass (``replace="rotated_mean"`` only).

    >>> import torch
    >>> x = torch.ones(1, 3, 1, 4)
    >>> x[..., 2] = 10.0  # dim 2 is massive
    >>> sel, value = select(Disruption(rule="topk", k=1), x, torch.ones(1, 3, dtype=torch.bool), site="k",
    ...                     stage="pre", layer=0, seeds=torch.tensor([0]))
    >>> sel.int().tolist(), value[0, 0, 2].item()
    ([[[0, 0, 1, 0]]], 10.0)
    """
    r, _, n_heads, d_head = x.shape
    w = mask[..., None, None].float()  # [r, pos, 1, 1]
    count = w.sum(1).clamp_min(1.0)  # [r, 1, 1]
    xf = x.float() * w
    if c.selection == "prompt":
        m = (xf * xf).sum(1).sqrt()  # [r, head, d]: the paper's M over the prompt
    else:
        li = calibration.layers.index(layer)
        m = calibration.norm(site, stage)[li].float().to(x.device).expand(r, n_heads, d_head)
    if c.rule in ("lambda", "topk"):
        sel = massive_mask(m, rule=c.rule, lam=c.lam, k=c.k)
    else:
        sel = torch.zeros_like(m, dtype=torch.bool)
        sel[..., list(c.dims)] = True
    heads = c.heads_at(layer)
    if heads is not None:
        keep = torch.zeros(n_heads, dtype=torch.bool)
        keep[list(heads)] = True
        sel &= keep.view(1, -1, 1).to(sel.device)
    units = None
    if c.granularity == "pair":
        if pair is None:
            raise DisruptionError("granularity='pair' needs the RoPE pair of each dim (pair=...); the model has no RoPE")
        units = pair_units(pair.to(x.device))
        sel = to_units(sel, units[0]).bool()[..., units[0]]  # every coordinate of a pair that has a selected one
    means = xf.sum(1) / count  # [r, head, d]: each dim's prompt mean
    if c.replace == "mean":
        value = means
    elif c.replace == "rotated_mean":
        if rotation is None:
            raise DisruptionError("replace='rotated_mean' needs the rows' RoPE tables (rotation=...)")
        value = (rotation.undo(x) * w).sum(1) / count  # each dim's prompt mean before RoPE
    elif c.replace == "zero":
        value = torch.zeros_like(m)
    elif c.replace == "pooled_mean":
        value = pooled_values(means, sel)
    else:
        li = calibration.layers.index(layer)
        value = calibration.mean(site, stage)[li].float().to(x.device).expand(r, n_heads, d_head)
    if c.control is not None:
        # what replacing each dim would remove over the prompt ([r, head, d]), for size-matched controls
        placed = rotation.apply(value) if c.replace == "rotated_mean" else value[:, None]  # at each position
        removed = ((x.float() - placed) ** 2 * w).sum(1) if c.control in MATCHED_CONTROLS else None
        pooled = ((xf * xf).sum(1), means, count) if c.replace == "pooled_mean" else None
        if units is None:
            sel = control_dims(c, m, sel, site=site, layer=layer, seeds=seeds, pair=pair, removed=removed,
                               pooled=pooled)
        else:  # the control picks whole pairs: its rule runs on per-pair totals, then back to dims
            unit, unit_pair = units
            if pooled is not None:  # per pair: its sums of squares and of means, and its size in dims
                pooled = (to_units(pooled[0], unit), to_units(pooled[1], unit), pooled[2], to_units(torch.ones_like(m), unit))
            sel = control_dims(c, to_units(m * m, unit).sqrt(), to_units(sel, unit).bool(), site=site, layer=layer,
                               seeds=seeds, pair=unit_pair, removed=removed if removed is None else to_units(removed, unit),
                               pooled=pooled)[..., unit]
        if c.replace == "pooled_mean":  # the control's own pooled scalar, as the official code's control
            value = pooled_values(means, sel)
    return sel, value


def pair_units(pair: Int[Tensor, " d"]) -> tuple[Int[Tensor, " d"], Int[Tensor, " units"]]:
    """The units of ``granularity="pair"``: each RoPE pair, then each unrotated dim on its own.

    Returns:
        ``(unit of each dim, RoPE pair of each unit)``; an unrotated unit's pair is ``-1``.

    >>> import torch
    >>> unit, unit_pair = pair_units(torch.tensor([0, 1, 0, 1, -1, -1]))  # half layout, 2 unrotated dims
    >>> unit.tolist(), unit_pair.tolist()
    ([0, 1, 0, 1, 2, 3], [0, 1, -1, -1])
    """
    n_pairs = int(pair.max()) + 1 if pair.numel() and int(pair.max()) >= 0 else 0
    rest = pair < 0
    unit = pair.clone()
    unit[rest] = n_pairs + torch.arange(int(rest.sum()), device=pair.device)
    unit_pair = torch.cat([torch.arange(n_pairs), torch.full((int(rest.sum()),), -1)]).to(pair.device)
    return unit, unit_pair


def to_units(t: Tensor, unit: Int[Tensor, " d"]) -> Float[Tensor, "rows head units"]:
    """``t`` (``[rows, head, d]``) summed over the dims of each unit (booleans count).

    >>> import torch
    >>> to_units(torch.tensor([[[1.0, 2.0, 3.0, 4.0]]]), torch.tensor([0, 1, 0, 1])).tolist()
    [[[4.0, 6.0]]]
    """
    t = t.double() if t.dtype == torch.bool else t
    out = torch.zeros(*t.shape[:-1], int(unit.max()) + 1, dtype=t.dtype, device=t.device)
    return out.index_add_(-1, unit, t)


def same_band(sel: Bool[Tensor, "rows head d"], pair: Int[Tensor, " d"]) -> Bool[Tensor, "rows head d"]:
    """Per head, the rotated dims whose RoPE pair lies in a band (equal-count thirds of the pairs,
    :func:`~massmech.core.frequency.equal_count_bands`) that holds one of the head's selected dims.

    >>> pair = torch.tensor([0, 1, 2, 3, 4, 5, -1])   # six pairs, high, high, mid, mid, low, low; one unrotated
    >>> sel = torch.tensor([[[False, False, False, False, True, False, False]]])
    >>> same_band(sel, pair).int().tolist()              # the low third: pairs 4 and 5
    [[[0, 0, 0, 0, 1, 1, 0]]]
    """
    rotated = pair >= 0
    names = equal_count_bands(int(pair.max()) + 1, 3)
    band = torch.as_tensor([["high", "mid", "low"].index(names[p]) if p >= 0 else 0 for p in pair.tolist()],
                           device=sel.device)
    one_hot = torch.nn.functional.one_hot(band, 3).bool() & rotated.to(sel.device)[:, None]  # [d, band]
    held = (sel[..., :, None] & one_hot).any(-2)  # [r, head, band]: a selected dim in that band
    return held[..., band] & rotated.to(sel.device)


def control_dims(
    c: Disruption,
    m: Float[Tensor, "rows head d"],
    sel: Bool[Tensor, "rows head d"],
    *,
    site: str,
    layer: int,
    seeds: Int[Tensor, " rows"],
    pair: Int[Tensor, " d"] | None = None,
    removed: Float[Tensor, "rows head d"] | None = None,
    pooled: tuple[Tensor, ...] | None = None,
) -> Bool[Tensor, "rows head d"]:
    """The dims control ``c.control`` replaces instead of ``sel``: as many per head among the
    allowed dims (or, ``"matched"``, as much removed variance, see
    :func:`~massmech.causal.controls.matched_dims`).

    Raises:
        DisruptionError: A head has fewer allowed dims than the rule selected.

    >>> import torch
    >>> m = torch.tensor([[[1.0, 5.0, 2.0, 9.0]]])
    >>> sel = torch.tensor([[[False, False, False, True]]])
    >>> control_dims(Disruption(rule="topk", k=1, control="lowest"), m, sel, site="k", layer=0,
    ...              seeds=torch.tensor([0])).int().tolist()  # the lowest-M dim instead of the top one
    [[[1, 0, 0, 0]]]
    """
    n = sel.sum(-1, keepdim=True)  # [r, head, 1]
    if c.control in MATCHED_CONTROLS:
        key = counter_uniform(c.seed, seeds, layer, site, tuple(m.shape[1:])).to(m.device)
        allowed = same_band(sel, pair) if c.control == "band-matched" else None
        return matched_dims(key, removed, sel, pooled=pooled, scale=c.control_scale, allowed=allowed)
    if c.control == "lowest":
        key = m.double()
    else:
        key = counter_uniform(c.seed, seeds, layer, site, tuple(m.shape[1:])).to(m.device)
    allowed = ~sel
    if c.control.startswith("band"):
        band = equal_count_bands(int(pair.max()) + 1, 3)
        in_band = torch.as_tensor([p >= 0 and band[p] == c.control.removeprefix("band-") for p in pair.tolist()])
        allowed &= in_band.to(m.device).view(1, 1, -1)
    if c.control_scale != 1.0:  # a scaled count: as many as asked, at most every allowed dim
        n = torch.minimum(torch.round(n * c.control_scale), allowed.sum(-1, keepdim=True))
    short = allowed.sum(-1, keepdim=True) < n  # [r, head, 1]
    if short.any():
        r, h, _ = short.nonzero()[0].tolist()
        raise DisruptionError(
            f"control {c.control!r} can pick only {int(allowed[r, h].sum())} dims in layer {layer} "
            f"{site}-head {h}, where the rule selected {int(n[r, h, 0])}: use another control or "
            "select fewer dims (smaller k, larger lam)"
        )
    key = key.masked_fill(~allowed, float("inf"))
    rank = torch.argsort(torch.argsort(key, dim=-1, stable=True), dim=-1, stable=True)
    return rank < n
