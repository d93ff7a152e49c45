"""Disruption by RoPE pair (``granularity="pair"``, issue 27 part 3), against hand-written references
on both layouts and partial rotary."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from massmech.causal.disruption import Disruption
from massmech.causal.intervention import Intervention
from massmech.causal.selection import select
from massmech.core.frequency import equal_count_bands
from massmech.core.rope import RopeSpec
from massmech.errors import DisruptionError

LAYOUTS = [("half", 8), ("adjacent", 8), ("half", 4), ("adjacent", 4)]  # (layout, rotary dims of 8)


def _partner(i: int, layout: str, rotary: int) -> int | None:
    """The dim rotated together with ``i``, written from the two RoPE conventions (not from RopeSpec)."""
    if i >= rotary:
        return None  # partial rotary: not rotated, no partner
    if layout == "half":  # HF rotate_half: x[i] with x[i + rotary/2]
        return i + rotary // 2 if i < rotary // 2 else i - rotary // 2
    return i + 1 if i % 2 == 0 else i - 1  # GPT-J: (2j, 2j+1)


def _x(rows=2, pos=7, heads=3, d=8, seed=0, massive=6.0, shift=0.0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, pos, heads, d, generator=g, dtype=torch.float64)
    x *= 0.3 + 1.2 * torch.rand(d, generator=g, dtype=torch.float64)  # dims of unequal size
    x[..., 1] *= massive  # a massive dim in every head (its partner is ordinary)
    x[:, :, 1, 6] *= 1.5 * massive
    x += shift * torch.randn(d, generator=g, dtype=torch.float64)  # dims with their own means (pooling matters)
    return x.float()


def _select(d: Disruption, x, layout, rotary, mask=None):
    pair = torch.as_tensor(RopeSpec.from_base(10_000, x.shape[-1], rotary_dim=rotary, layout=layout).dim_to_pair())
    mask = torch.ones(x.shape[:2], dtype=torch.bool) if mask is None else mask
    return select(d, x, mask, site="k", stage="post", layer=0, seeds=torch.arange(x.shape[0]), pair=pair)


@pytest.mark.parametrize(("layout", "rotary"), LAYOUTS)
@pytest.mark.parametrize("k", [1, 2])
def test_pair_selection_matches_a_hand_written_reference(layout, rotary, k):
    x = _x()
    sel, value = _select(Disruption(rule="topk", k=k, granularity="pair"), x, layout, rotary)
    m = (x.double() ** 2).sum(1).sqrt().numpy()  # [r, h, d]
    mean = x.double().mean(1).numpy()
    want = np.zeros_like(m, dtype=bool)
    for r in range(m.shape[0]):
        for h in range(m.shape[1]):
            for i in np.argsort(-m[r, h])[:k]:
                want[r, h, i] = True
                p = _partner(int(i), layout, rotary)
                if p is not None:
                    want[r, h, p] = True
    assert np.array_equal(sel.numpy(), want)
    np.testing.assert_allclose(value.numpy()[want], mean[want], rtol=1e-6, atol=1e-7)
    coordinate, _ = _select(Disruption(rule="topk", k=k), x, layout, rotary)
    assert (coordinate <= sel).all() and sel.sum() > coordinate.sum()  # a superset: the partners were added


@pytest.mark.parametrize(("layout", "rotary"), [("half", 16), ("adjacent", 16), ("half", 12), ("adjacent", 12)])
@pytest.mark.parametrize("control", ["lowest", "random", "band-low", "band-mid"])
def test_pair_controls_pick_as_many_whole_pairs_elsewhere(layout, rotary, control):
    x = _x(d=16, seed=1)
    d = Disruption(rule="topk", k=1, granularity="pair")
    sel, _ = _select(d, x, layout, rotary)
    ctrl, _ = _select(d.as_control(control), x, layout, rotary)
    spec = RopeSpec.from_base(10_000, 16, rotary_dim=rotary, layout=layout)
    for r in range(x.shape[0]):
        for h in range(x.shape[2]):
            picked = set(np.flatnonzero(ctrl[r, h].numpy()).tolist())
            assert not picked & set(np.flatnonzero(sel[r, h].numpy()).tolist())
            units = {(i, _partner(i, layout, rotary)) if _partner(i, layout, rotary) is not None else (i,)
                     for i in picked}
            units = {tuple(sorted(u)) for u in units}
            assert set().union(*units) == picked  # whole pairs only
            assert len(units) == 1  # as many units as the rule's one
            if control.startswith("band"):
                (u,) = units
                band = equal_count_bands(spec.n_pairs, 3)
                assert len(u) == 2 and band[int(spec.dim_to_pair()[u[0]])] == control.removeprefix("band-")
    if control == "lowest":  # the lowest-norm pair: smallest norm over both coordinates
        m = (x.double() ** 2).sum(1)  # [r, h, d] squared norms
        r, h = 0, 0
        norms = {}
        for i in range(16):
            p = _partner(i, layout, rotary)
            u = tuple(sorted((i, p))) if p is not None else (i,)
            norms[u] = float(sum(m[r, h, j] for j in u))
        taken = {u for u in norms if set(u) & set(np.flatnonzero(sel[r, h].numpy()).tolist())}
        best = min((u for u in norms if u not in taken), key=norms.get)
        assert set(np.flatnonzero(ctrl[r, h].numpy()).tolist()) == set(best)


@pytest.mark.parametrize("control", ["matched", "band-matched"])
@pytest.mark.parametrize("replace", ["mean", "pooled_mean"])
def test_pair_matched_control_removes_as_much_variance(replace, control):
    x = _x(rows=3, heads=4, d=64, pos=40, seed=2, massive=2.0, shift=1.0)
    d = Disruption(rule="topk", k=1, granularity="pair", replace=replace)
    sel, value = _select(d, x, "half", 64)
    ctrl, cvalue = _select(d.as_control(control), x, "half", 64)
    xd = x.double()

    def removed(s, v):  # sum over tokens and the replaced dims of the squared change
        return float((((xd - v.double()[:, None]) ** 2) * s[:, None]).sum())
    target, got = removed(sel, value), removed(ctrl, cvalue)
    assert not (sel & ctrl).any() and ctrl.sum() % 2 == 0
    assert got == pytest.approx(target, rel=0.10)
    if control == "band-matched":  # whole pairs of the selected pair's third only
        third = (torch.arange(64) % 32) * 3 // 32
        for r in range(sel.shape[0]):
            for h in range(sel.shape[1]):
                assert set(third[ctrl[r, h]].tolist()) <= set(third[sel[r, h]].tolist())


def test_pair_granularity_through_the_hooks(tiny_models):
    """On a real model (tiny-llama, rotate_half): post-RoPE K, the replaced dims come in partner pairs
    holding the prompt means; every other value is untouched; rows are batch-invariant."""
    model = tiny_models["tiny-llama"]
    tokens = model.probe_tokens(12).repeat(2, 1)
    tokens[1] = tokens[1].flip(0)
    d = Disruption(target="k", stage="post", rule="topk", k=1, layers=(1,), granularity="pair")
    before = model.run_sites(tokens, [("k", "post")], layers=[1])[("k", "post", 1)].float()
    name, heads_first = model.hook_name("k", "post", 1)
    seen = {}

    def grab(x, hook):
        seen["x"] = (x.transpose(1, 2) if heads_first else x).detach().clone().float()

    with torch.inference_mode(), model.bridge.hooks(fwd_hooks=[*Intervention(model, [d]).fwd_hooks, (name, grab)]):
        model.bridge(tokens, return_type=None)
    after = seen["x"]
    changed = (after != before).any(1)  # [b, h, d]
    d_head = before.shape[-1]
    for b in range(2):
        for h in range(before.shape[2]):
            dims = np.flatnonzero(changed[b, h].numpy()).tolist()
            assert len(dims) == 2 and dims[1] == dims[0] + d_head // 2, dims
            np.testing.assert_allclose(after[b, :, h, dims].numpy(), before[b, :, h, dims].mean(0).expand(12, 2).numpy(),
                                       rtol=1e-5, atol=1e-6)


def test_pair_granularity_needs_rope(tiny_models):
    with pytest.raises(DisruptionError, match="needs RoPE pairs"):
        Disruption(granularity="pair").validate(tiny_models["tiny-gpt2"])
    with pytest.raises(DisruptionError, match="granularity must be one of"):
        Disruption(granularity="pairs")
    d = Disruption(rule="topk", k=1, granularity="pair")
    assert d.label() == "qk.pre.top1.pair" and "whole RoPE pairs" in d.protocol()
    assert Disruption.from_dict(d.to_dict()) == d and "granularity" not in Disruption().to_dict()
