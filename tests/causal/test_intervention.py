"""Disruption semantics on tiny models against hand-computed expectations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from massmech.causal.disruption import Disruption
from massmech.causal.intervention import Intervention, disrupt
from massmech.errors import DisruptionError, NoOpDisruptionError


def _observe(model, d: Disruption, tokens, site: str, layer: int):
    """Activation at (site, d.stage, layer) as [b, pos, head, d] after the disruption's hook."""
    iv = Intervention(model, [d])
    name, heads_first = model.hook_name(site, d.stage, layer)
    seen = {}

    def grab(x, hook):
        seen["x"] = (x.transpose(1, 2) if heads_first else x).detach().clone()

    with torch.inference_mode(), model.bridge.hooks(fwd_hooks=[*iv.fwd_hooks, (name, grab)]):
        model.bridge(tokens, return_type=None)
    return seen["x"].float(), iv


def _expected(x: np.ndarray, rule: str, k: int = 2, lam: float = 1.1):
    """Hand computation with numpy: selected dims [b, h, d] and the per-dim mean [b, h, d]."""
    m = np.sqrt((x.astype(np.float64) ** 2).sum(1))  # [b, h, d]
    if rule == "topk":
        sel = np.zeros_like(m, dtype=bool)
        idx = np.argsort(-m, axis=-1)[..., :k]
        np.put_along_axis(sel, idx, True, axis=-1)
    else:
        sel = m > lam * m.mean(-1, keepdims=True)
    return sel, x.astype(np.float64).mean(1), m


def _check(model, d: Disruption, site: str, layer: int, tokens):
    before = model.run_sites(tokens, [(site, d.stage)], layers=[layer])[(site, d.stage, layer)]
    after, iv = _observe(model, d, tokens, site, layer)
    sel, mean, _ = _expected(before.numpy(), d.rule, d.k, d.lam)
    changed = sel[:, None].repeat(before.shape[1], 1)  # [b, pos, h, d]
    assert changed.any()
    # the selected dims now hold the prompt mean at every position ...
    np.testing.assert_allclose(after.numpy()[changed], np.broadcast_to(mean[:, None], after.shape)[changed], rtol=1e-5, atol=1e-6)
    # ... and every other value is bit-identical
    assert torch.equal(after[torch.from_numpy(~changed)], before[torch.from_numpy(~changed)])
    return iv


@pytest.mark.parametrize("rule", ["topk", "lambda"])
def test_pre_rope_disruption_matches_hand_computation(tiny, rule):
    tokens = tiny.probe_tokens(12).repeat(2, 1)
    tokens[1] = tokens[1].flip(0)
    for site in ("q", "k"):
        d = Disruption(target=site, stage="pre", rule=rule, k=2, lam=1.1, layers=(1,))
        _check(tiny, d, site, 1, tokens)


def test_post_rope_disruption_matches_hand_computation(tiny_rope):
    tokens = tiny_rope.probe_tokens(10)
    for site in ("q", "k"):
        d = Disruption(target=site, stage="post", rule="topk", k=3, layers=(0,))
        _check(tiny_rope, d, site, 0, tokens)


def test_disruption_changes_the_output_and_only_the_targeted_site(tiny_rope):
    tokens = tiny_rope.probe_tokens(10)
    base = tiny_rope.run_sites(tokens, [("q", "pre"), ("k", "pre")], layers=[0])
    d = Disruption(target="k", stage="pre", rule="topk", k=2, layers=(0,))
    with torch.inference_mode(), disrupt(tiny_rope, d):
        logits = tiny_rope.bridge(tokens)
    after_q, _ = _observe(tiny_rope, d, tokens, "q", 0)
    assert torch.equal(after_q, base[("q", "pre", 0)])  # target k leaves q alone
    with torch.inference_mode():
        assert not torch.allclose(logits, tiny_rope.bridge(tokens))  # the hook output is used


def test_heads_and_layers_restrict_the_disruption(tiny_models):
    model = tiny_models["tiny-llama"]
    tokens = model.probe_tokens(10)
    before = model.run_sites(tokens, [("q", "pre")], layers=[1])[("q", "pre", 1)]
    d = Disruption(target="q", rule="topk", k=2, layers=(1,), heads=(2,))
    after, iv = _observe(model, d, tokens, "q", 1)
    diff = (after != before).any(1)  # [b, head, d]
    assert diff[:, 2].sum() == 2 and not diff[:, [0, 1, 3]].any()
    assert int(iv.last_selected[0]) == 2


def test_units_disrupt_each_head_in_its_own_layer_only(tiny_models):
    model = tiny_models["tiny-llama"]
    tokens = model.probe_tokens(10)
    before = model.run_sites(tokens, [("q", "pre")], layers=[0, 1])
    d = Disruption(target="q", rule="topk", k=2, units=[(1, 2), (0, 3)])
    for layer, head, units in ((0, 3, d.units), (1, 2, [(1, 2)])):  # layer 1 seen with layer 0 left alone
        after, iv = _observe(model, Disruption(target="q", rule="topk", k=2, units=units), tokens, "q", layer)
        diff = (after != before[("q", "pre", layer)]).any(1)  # [b, head, d]
        others = [h for h in range(model.info.n_heads) if h != head]
        assert diff[:, head].sum() == 2 and not diff[:, others].any(), (layer, head)
        assert int(iv.last_selected[0]) == 2 * len(units)  # 2 dims in each unit
    after0, _ = _observe(model, Disruption(target="q", rule="topk", k=2, units=[(1, 2)]), tokens, "q", 0)
    assert torch.equal(after0, before[("q", "pre", 0)])  # no unit in layer 0: nothing there
    every = Disruption(target="q", rule="topk", k=2, units=[(la, 1) for la in range(model.info.n_layers)])
    with torch.inference_mode():
        with disrupt(model, every):
            a = model.bridge(tokens)
        with disrupt(model, Disruption(target="q", rule="topk", k=2, heads=(1,))):
            b = model.bridge(tokens)
    assert torch.equal(a, b)  # head 1 in every layer, as units, is heads=(1,)
    assert "units" not in Disruption().to_dict() and d.label() == "q.pre.top2.U0:3,1:2"
    with pytest.raises(DisruptionError, match="leave layers and heads"):
        Disruption(units=[(0, 1)], layers=[0])
    with pytest.raises(DisruptionError, match="out of range"):
        Disruption(target="k", units=[(0, model.info.n_kv_heads)]).validate(model)
    with pytest.raises(DisruptionError, match="layers out of range"):
        Disruption(units=[(model.info.n_layers, 0)]).validate(model)


@pytest.mark.parametrize("control", ["lowest", "random", "band-low", "band-high"])
def test_controls_pick_the_same_count_elsewhere(tiny_models, control):
    model = tiny_models["tiny-qwen2"]
    tokens = model.probe_tokens(16)
    before = model.run_sites(tokens, [("k", "pre")], layers=[0])[("k", "pre", 0)]
    d = Disruption(target="k", rule="topk", k=3, layers=(0,))
    sel, _, m = _expected(before.numpy(), "topk", k=3)
    after, iv = _observe(model, d.as_control(control), tokens, "k", 0)
    picked = (after != before).any(1).numpy()  # [b, head, d]
    assert int(iv.last_selected[0]) == sel.sum() == picked.sum()
    assert (picked.sum(-1) == 3).all() and not (picked & sel).any()
    if control == "lowest":
        lowest = np.argsort(m, axis=-1)[..., :3]
        assert np.take_along_axis(picked, lowest, -1).all()
    if control.startswith("band"):
        pair = model.rope.dim_to_pair()
        n_pairs = model.rope.n_pairs
        third = np.where(pair >= 0, pair * 3 // n_pairs, -1)  # 0: fastest third ... 2: slowest
        band = third == (2 if control == "band-low" else 0)
        assert band[np.nonzero(picked)[-1]].all()


def test_random_control_is_seeded_and_batch_invariant(tiny_models):
    model = tiny_models["tiny-llama"]
    tokens = torch.stack([model.probe_tokens(12)[0], model.probe_tokens(12)[0].flip(0)])
    d = Disruption(target="q", rule="topk", k=2, layers=(0,), control="random", seed=3)
    before = model.run_sites(tokens, [("q", "pre")], layers=[0])[("q", "pre", 0)]
    iv = Intervention(model, [d])
    name, _ = model.hook_name("q", "pre", 0)
    picks = []
    for rows in ([0, 1], [1]):
        seen = {}
        iv.set_batch(torch.zeros(len(rows), dtype=torch.long), torch.ones(len(rows), 12, dtype=torch.bool),
                     row_ids=torch.tensor([7, 9])[rows])
        with torch.inference_mode(), model.bridge.hooks(fwd_hooks=[*iv.fwd_hooks, (name, lambda x, hook, seen=seen: seen.setdefault("x", x.clone()))]):
            model.bridge(tokens[rows], return_type=None)
        picks.append((seen["x"] != before[rows]).any(1))
    assert torch.equal(picks[0][1], picks[1][0])  # row id 9 picks the same dims alone or batched
    d2 = Disruption(target="q", rule="topk", k=2, layers=(0,), control="random", seed=4)
    after2, _ = _observe(model, d2, tokens[:1], "q", 0)
    assert not torch.equal((after2 != before[:1]).any(1), picks[0][:1])  # another seed, other dims


def test_replacement_zero_and_calibration(tiny_models):
    import massmech as mm

    model = tiny_models["tiny-llama"]
    tokens = model.probe_tokens(10)
    after, _ = _observe(model, Disruption(target="q", rule="dims", dims=(0, 5), replace="zero", layers=(0,)), tokens, "q", 0)
    assert (after[..., [0, 5]] == 0).all()
    calib = mm.capture_stats(model, [model.probe_tokens(20)[0].tolist()], sites=("q", "k"), progress=False)
    d = Disruption(target="q", rule="topk", k=2, selection="calibration", replace="calib_mean", layers=(0,))
    after, _ = _observe_calib(model, d, tokens, calib)
    top = calib.norm("q", "pre")[0].topk(2, -1).indices  # [head, 2]
    for h in range(model.info.n_heads):
        expect = calib.mean("q", "pre")[0, h, top[h]].float()
        assert torch.allclose(after[0, :, h, top[h]], expect.expand(10, 2))
    with pytest.raises(DisruptionError, match="calibration"):
        Intervention(model, [d])


def _observe_calib(model, d, tokens, calib):
    iv = Intervention(model, [d], calibration=calib)
    name, _ = model.hook_name("q", "pre", 0)
    seen = {}
    with torch.inference_mode(), model.bridge.hooks(fwd_hooks=[*iv.fwd_hooks, (name, lambda x, hook: seen.setdefault("x", x.clone()))]):
        model.bridge(tokens, return_type=None)
    return seen["x"], iv


def test_noop_guard(tiny_models):
    model = tiny_models["tiny-llama"]
    tokens = model.probe_tokens(10)
    with pytest.raises(NoOpDisruptionError, match="selected no dim"):
        with torch.inference_mode(), disrupt(model, Disruption(lam=1000.0)):
            model.bridge(tokens)
    # the paper's generation bug: each cached decode step treated as a prompt of one token,
    # whose per-step mean is the token itself
    d = Disruption(rule="topk", k=2)
    with pytest.raises(DisruptionError, match="one-token forward pass"):
        with torch.inference_mode(), disrupt(model, d):
            model.bridge.original_model.generate(tokens, attention_mask=torch.ones_like(tokens), max_new_tokens=2, do_sample=False)
    # with prompt masks, a mean over a single prompt token changes nothing: the guard says so
    iv = Intervention(model, [d])
    iv.set_batch(torch.zeros(1, dtype=torch.long), torch.ones(1, 1, dtype=torch.bool))
    with pytest.raises(NoOpDisruptionError, match="single token"), torch.inference_mode(), iv.active():
        model.bridge(tokens[:, :1])
    # after the error the state is clean: a good pass of the same shape counts only itself
    iv.set_batch(torch.zeros(1, dtype=torch.long), torch.ones(1, 10, dtype=torch.bool))
    with torch.inference_mode(), iv.active():
        model.bridge(tokens)
    assert int(iv.last_selected[0]) == 2 * 2 * (4 + 2)  # k x layers x (q heads + kv heads)


def test_controls_that_cannot_match_the_count_raise(tiny_models):
    model = tiny_models["tiny-llama"]
    d = Disruption(rule="topk", k=6, control="band-low")  # 16 dims: 4 per third, fewer than 6
    with pytest.raises(DisruptionError, match="can pick only"), torch.inference_mode(), disrupt(model, d):
        model.bridge(model.probe_tokens(8))


def test_set_batch_checks_its_masks(tiny_models):
    iv = Intervention(tiny_models["tiny-llama"], [Disruption(rule="topk", k=2)])
    full = torch.ones(2, 5, dtype=torch.bool)
    with pytest.raises(ValueError, match="no prompt token"):
        iv.set_batch(torch.zeros(2, dtype=torch.long), torch.zeros(2, 5, dtype=torch.bool), full)
    with pytest.raises(ValueError, match="full_mask does not"):
        iv.set_batch(torch.zeros(2, dtype=torch.long), full, full & torch.tensor([True] * 4 + [False]))
    with pytest.raises(ValueError, match="out of range"):
        iv.set_batch(torch.tensor([0, 3]), full)


def test_bad_disruptions(tiny_models):
    gpt2, llama = tiny_models["tiny-gpt2"], tiny_models["tiny-llama"]
    with pytest.raises(DisruptionError, match="stage='pre'"):
        Disruption(stage="post").validate(gpt2)
    with pytest.raises(DisruptionError, match="larger than d_head"):
        Disruption(rule="topk", k=llama.info.d_head + 1).validate(llama)
    with pytest.raises(DisruptionError, match="out of range"):
        Disruption(rule="dims", dims=(llama.info.d_head,)).validate(llama)
    with pytest.raises(DisruptionError, match="layers"):
        Disruption(layers=(5,)).validate(llama)
    with pytest.raises(DisruptionError, match="needs RoPE"):
        Disruption(control="band-low").validate(gpt2)
    for bad in (dict(target="v"), dict(stage="mid"), dict(rule="x"), dict(lam=0), dict(rule="topk", k=0), dict(rule="dims"), dict(dims=(1,)), dict(layers=())):
        with pytest.raises(DisruptionError):
            Disruption(**bad)


def test_disruption_serialises():
    d = Disruption(target="k", stage="post", rule="topk", k=3, layers=[0, 1, 2], control="random", seed=2)
    assert Disruption.from_dict(d.to_dict()) == d
    assert Disruption(lam=5) == Disruption(lam=5.0) and Disruption(layers=range(2)).layers == (0, 1)
    import json

    assert Disruption.from_dict(json.loads(json.dumps(d.to_dict()))) == d
    assert d.label() == "k.post.top3.L0-2.ctrl-random-s2"


def test_matched_control_removes_the_same_variance_per_head(tiny_models):
    """Issue 14, finding 1: a control matched in size (removed token variance), not only in count."""
    model = tiny_models["tiny-qwen2"]
    tokens = model.probe_tokens(24)
    x = model.run_sites(tokens, [("k", "pre")], layers=[0])[("k", "pre", 0)].double()  # [1, pos, h, d]
    d = Disruption(target="k", rule="topk", k=2, layers=(0,))
    sel, mean, _ = _expected(x.numpy(), "topk", k=2)
    var = ((x - x.mean(1, keepdim=True)) ** 2).sum(1).numpy()  # [1, h, d]: what mean replacement removes
    target = (var * sel).sum(-1)
    after, iv = _observe(model, d.as_control("matched"), tokens, "k", 0)
    picked = (after != x.float()).any(1).numpy()
    assert not (picked & sel).any()
    got = (var * picked).sum(-1)
    np.testing.assert_allclose(got, target, rtol=0.10)  # within 10% in every head
    counted, _ = _observe(model, d.as_control("random"), tokens, "k", 0)
    same_count = (counted != x.float()).any(1).numpy()
    assert abs((var * same_count).sum() - target.sum()) > abs(got.sum() - target.sum())  # the old control was further off
    # the reported share: removed variance over the site's token variance
    assert float(iv.last_removed[0]) == pytest.approx(got.sum() / var.sum(), rel=1e-4)
    _, massive = _observe(model, d, tokens, "k", 0)
    assert float(massive.last_removed[0]) == pytest.approx(target.sum() / var.sum(), rel=1e-4)


def _official_pooled(x: torch.Tensor, k: int, largest: bool = True) -> torch.Tensor:
    """The paper code's replacement, re-derived from its description: per head, the k dims of
    largest (or smallest) L2 norm over tokens all get one scalar, the mean of their token means."""
    out = x.clone()
    for h in range(x.shape[2]):
        norms = x[0, :, h].norm(dim=0)
        dims = torch.topk(norms, k, largest=largest).indices.tolist()
        value = torch.stack([x[0, :, h, i].mean() for i in dims]).mean()
        for i in dims:
            out[0, :, h, i] = value
    return out


@pytest.mark.parametrize("control", [None, "lowest"])
def test_pooled_mean_is_the_official_replacement(tiny_models, control):
    """Issue 14, finding 6: the paper's protocol (post-RoPE, top-k per head, one pooled scalar)."""
    model = tiny_models["tiny-qwen2"]
    tokens = model.probe_tokens(14)
    x = model.run_sites(tokens, [("q", "post")], layers=[1])[("q", "post", 1)]
    d = Disruption(target="q", stage="post", rule="topk", k=3, replace="pooled_mean", layers=(1,), control=control)
    after, _ = _observe(model, d, tokens, "q", 1)
    np.testing.assert_allclose(after.numpy(), _official_pooled(x.float(), 3, largest=control is None).numpy(),
                               rtol=1e-5, atol=1e-6)
    one = Disruption(target="q", stage="post", rule="topk", k=1, layers=(1,))  # at k = 1 it is the dim's mean
    a, _ = _observe(model, one, tokens, "q", 1)
    b, _ = _observe(model, Disruption(**(one.to_dict() | {"replace": "pooled_mean"})), tokens, "q", 1)
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-7)


def test_matched_control_under_the_pooled_scalar_removes_as_much(tiny_models):
    """The paper preset's variance-matched control: its dims share one pooled scalar (the mean of their
    means), so what a set removes is not a sum over dims; the control is sized on the exact amount."""
    model = tiny_models["tiny-llama"]
    tokens = model.probe_tokens(32)
    x = model.run_sites(tokens, [("k", "post")], layers=[1])[("k", "post", 1)].double()[0]  # [pos, h, d]
    d = Disruption(target="k", stage="post", rule="topk", k=1, replace="pooled_mean", layers=(1,))
    _, massive = _observe(model, d, tokens, "k", 1)
    after, iv = _observe(model, d.as_control("matched"), tokens, "k", 1)
    picked = (after[0] != x.float()).any(0).numpy()  # [h, d]
    top = np.argmax((x ** 2).sum(0).numpy(), axis=-1)
    target, got = [], []
    for h in range(x.shape[1]):
        assert not picked[h, top[h]] and picked[h].any()
        target.append(float(((x[:, h, top[h]] - x[:, h, top[h]].mean()) ** 2).sum()))
        s = x[:, h, picked[h]]  # [pos, dims]: their one pooled scalar
        got.append(float(((s - s.mean(0).mean()) ** 2).sum()))
    np.testing.assert_allclose(sum(got), sum(target), rtol=0.10)
    assert float(iv.last_removed[0]) == pytest.approx(float(massive.last_removed[0]), rel=0.10)


def test_band_matched_control_stays_in_the_massive_dims_band(tiny_models):
    """Issue 26, item 2: the same-band control, matched in removed variance, draws only from the RoPE
    thirds that hold each head's selected dims."""
    model = tiny_models["tiny-qwen2"]
    tokens = model.probe_tokens(24)
    x = model.run_sites(tokens, [("k", "pre")], layers=[0])[("k", "pre", 0)].double()
    d = Disruption(target="k", rule="topk", k=2, layers=(0,))
    sel, _, _ = _expected(x.numpy(), "topk", k=2)
    var = ((x - x.mean(1, keepdim=True)) ** 2).sum(1).numpy()  # [1, h, d]
    pair = model.rope.dim_to_pair()
    third = np.where(pair >= 0, pair * 3 // model.rope.n_pairs, -1)
    held = [set(third[sel[0, h]]) for h in range(sel.shape[1])]
    after, _ = _observe(model, d.as_control("band-matched"), tokens, "k", 0)
    picked = (after != x.float()).any(1).numpy()[0]  # [h, d]
    assert picked.any() and not (picked & sel[0]).any()
    plain = (_observe(model, d.as_control("matched"), tokens, "k", 0)[0] != x.float()).any(1).numpy()[0]
    outside = 0
    for h in range(picked.shape[0]):
        assert set(third[picked[h]]) <= held[h], h  # only the bands of this head's massive dims
        outside += int(not set(third[plain[h]]) <= held[h])
        target, pool = (var[0, h] * sel[0, h]).sum(), (var[0, h] * (~sel[0, h]) * np.isin(third, list(held[h]))).sum()
        if pool >= 1.2 * target:  # enough variance in the band: matched as the plain control is
            assert (var[0, h] * picked[h]).sum() == pytest.approx(target, rel=0.10)
    assert outside > 0  # the plain control does leave the band: the restriction is doing something
