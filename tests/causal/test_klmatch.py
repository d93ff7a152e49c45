"""Effect-matched controls: the scaled controls, the neutral-text KL, and the search."""

from __future__ import annotations

import pytest
import torch

from massmech.causal.controls import matched_dims
from massmech.causal.disruption import Disruption
from massmech.causal.intervention import disrupt
from massmech.causal.klmatch import kl_match, neutral_effect
from massmech.causal.selection import control_dims
from massmech.core.loading import load_model
from massmech.errors import DisruptionError

WINDOWS = torch.randint(3, 200, (6, 16), generator=torch.Generator().manual_seed(1))


def test_the_scale_multiplies_what_the_matched_control_removes():
    gen = torch.Generator().manual_seed(0)
    removed = torch.rand(1, 4, 64, generator=gen)
    sel = torch.zeros(1, 4, 64, dtype=torch.bool)
    sel[..., 0] = True
    removed[..., 0] = 2.0
    key = torch.rand(1, 4, 64, generator=gen)
    for scale in (1.0, 3.0, 6.0):
        took = matched_dims(key, removed, sel, scale=scale)
        got = (removed * took).sum(-1)
        assert not (took & sel).any()
        assert torch.all((got - 2.0 * scale).abs() <= 0.05 * 2.0 * scale + 1e-6), (scale, got)


def test_the_scale_multiplies_the_random_controls_count_up_to_every_other_dim():
    m = torch.rand(2, 3, 8, generator=torch.Generator().manual_seed(0))
    sel = torch.zeros(2, 3, 8, dtype=torch.bool)
    sel[..., :2] = True
    for scale, want in ((1.0, 2), (2.5, 5), (10.0, 6)):  # round(2 x 2.5); capped at the 6 others
        d = Disruption(rule="topk", k=2, control="random", control_scale=scale)
        got = control_dims(d, m, sel, site="k", layer=0, seeds=torch.tensor([0, 1]))
        assert got.sum(-1).eq(want).all() and not (got & sel).any()


def test_control_scale_keeps_old_keys_and_names_itself():
    assert "control_scale" not in Disruption(control="matched").to_dict()
    d = Disruption(rule="topk", k=1).as_control("matched", 2.0)
    assert d.to_dict()["control_scale"] == 2.0 and d.label().endswith(".x2")
    assert Disruption.from_dict(d.to_dict()) == d
    with pytest.raises(DisruptionError, match="scales the 'matched', 'band-matched' or 'random'"):
        Disruption(control_scale=2.0)
    with pytest.raises(DisruptionError, match="> 0"):
        Disruption(control="matched", control_scale=0)


def test_neutral_kl_is_the_hand_computed_kl_and_does_not_depend_on_the_batch():
    model = load_model("tiny-llama")
    d = Disruption(rule="topk", k=2)
    e = neutral_effect(model, d, WINDOWS, batch_size=4)
    with torch.inference_mode():
        p = torch.log_softmax(model.logits(WINDOWS).float(), -1)
        with disrupt(model, d):
            q = torch.log_softmax(model.logits(WINDOWS).float(), -1)
    by_hand = float((p.exp() * (p - q)).sum(-1).mean())
    assert e.kl == pytest.approx(by_hand, rel=1e-4) and e.kl > 0
    ctrl = d.as_control("matched", 1.7)
    one, three = (neutral_effect(model, ctrl, WINDOWS, batch_size=b) for b in (1, 3))
    assert one.kl == pytest.approx(three.kl, rel=1e-5) and one.removed_variance == pytest.approx(three.removed_variance)
    assert 0 < e.removed_energy <= e.removed_variance


@pytest.mark.parametrize("control", ["matched", "band-matched", "random"])
def test_kl_match_finds_a_control_of_equal_effect_or_says_it_did_not(control):
    model = load_model("tiny-qwen2")
    d = Disruption(rule="topk", k=1)
    m = kl_match(model, d, WINDOWS, control=control)
    assert m.control == d.as_control(control, m.control.control_scale)
    again = neutral_effect(model, m.control, WINDOWS)
    assert again.kl == pytest.approx(m.effect.kl, rel=1e-6)  # the reported effect is the control's own
    assert m.matched == (abs(m.effect.kl - m.target.kl) <= 0.1 * m.target.kl)
    if control == "matched":
        assert m.matched, m.trace
    # a search that may not move from scale 1 reports what it found, and that it is no match
    stuck = kl_match(model, d, WINDOWS, control=control, max_scale=1.0)
    assert stuck.control.control_scale == 1.0 and len(stuck.trace) == 1
    assert stuck.matched == (abs(stuck.effect.kl - stuck.target.kl) <= 0.1 * stuck.target.kl)
    with pytest.raises(DisruptionError, match="a control already"):
        kl_match(model, d.as_control(), WINDOWS)


def test_ablate_runs_the_effect_matched_control_and_reports_both_arms(tmp_path):
    import json

    from massmech.studies.ablation import ablate

    res = ablate("tiny-llama", "kv_lookup", n=4, disruption=Disruption(rule="topk", k=2), kl_match=True,
                 out=tmp_path / "abl")
    m = res["kl_match"]
    assert m["control"] == "matched" and m["n_tokens"] == 16 * 128
    assert m["matched"] == (abs(m["kl_control"] - m["kl_massive"]) <= 0.1 * m["kl_massive"])
    assert {"removed_variance_massive", "removed_energy_control"} <= set(m) and "neutral text" in res["protocol"]
    ran = json.loads((tmp_path / "abl" / "manifest.json").read_text())["config"]["control_disruption"]
    assert Disruption.from_dict(ran).control_scale == m["control_scale"]  # the manifest records the control that ran
    assert ablate("tiny-llama", "kv_lookup", n=4, disruption=Disruption(rule="topk", k=2))["kl_match"] is None
    with pytest.raises(DisruptionError, match="scales a variance-matched or the 'random'"):
        ablate("no-such-model", "kv_lookup", n=4, control="lowest", kl_match=True)  # refused before any load
