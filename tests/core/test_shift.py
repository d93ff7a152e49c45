"""Position shift (P9): the measured changes equal a hand-written reference, and RoPE's shift invariance shows."""

import numpy as np
import pytest
import torch

from massmech.core.bridge import attention_scaling
from massmech.core.shift import band_dims, relative_changes, shift_changes, slow_band_least
from massmech.core.sites import to_heads
from massmech.errors import InputTypeError

TEXT = "The quick brown fox jumps over the lazy dog."
PREFIX = [ord(c) for c in "Unrelated words come first."]  # byte tokens of the tiny models


def _ids(model, text=TEXT):
    lead = model.tokenize("")[0]
    return lead, torch.tensor([model.tokenize(text)[0][len(lead):]])


def _reference(model, text_ids, lead, prefix, layer, skip):
    """Hand-written: hook_rot_q/k and the pre-RoPE hooks by name, bands as literal dim lists, loops over edges."""
    runs = []
    for ids in (lead + text_ids, lead + prefix + text_ids):
        names = {("q", "post"): f"blocks.{layer}.attn.hook_rot_q", ("k", "post"): f"blocks.{layer}.attn.hook_rot_k"}
        for site in "qk":
            names[(site, "pre")] = model.hook_name(site, "pre", layer)[0]
        acts = model.run_hooks(torch.tensor([ids]), names)
        heads = {"q": model.info.n_heads, "k": model.info.n_kv_heads}
        runs.append({key: to_heads(x, model.hook_name(key[0], key[1], layer)[1], heads[key[0]])[0].double()
                     for key, x in acts.items()})
    d, n = model.rope.d_head, len(text_ids) - skip
    thirds = np.array_split(np.arange(d // 2), 3)  # equal-count thirds of the pairs, fastest first (half layout)
    dims = {b: sorted([*p, *(p + d // 2)]) for b, p in zip(("high", "mid", "low"), thirds, strict=True)}
    starts = (len(lead) + skip, len(lead) + len(prefix) + skip)
    scale = attention_scaling(model.bridge, layer)[0]
    group = model.info.n_heads // model.info.n_kv_heads
    out = {}
    for band, ds in dims.items():
        c = []
        for run, s in zip(runs, starts, strict=True):
            q, k = run[("q", "post")][s:s + n][..., ds], run[("k", "post")][s:s + n][..., ds]
            c.append(torch.stack([torch.stack([torch.stack([scale * (q[i, h] @ k[j, h // group]) for j in range(n)])
                                               for i in range(n)]) for h in range(q.shape[1])]))
        tril = torch.ones(n, n).tril().bool()
        out[("logit", band)] = (float((c[1] - c[0]).abs()[:, tril].sum()), float(c[0].abs()[:, tril].sum()))
        for site in "qk":
            a, b = (run[(site, "pre")][s:s + n][..., ds] for run, s in zip(runs, starts, strict=True))
            out[(site, band)] = (float(((b - a) ** 2).sum()), float((a ** 2).sum()))
    return out


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-qwen2", "tiny-gemma3"])
def test_changes_equal_a_hand_written_reference(tiny_models, name):
    model = tiny_models[name]
    lead, ids = _ids(model)
    t = shift_changes(model, ids, PREFIX, lead=lead, layers=[1], skip=1)
    ref = _reference(model, ids[0].tolist(), lead, PREFIX, 1, 1)
    assert len(t) == len(ref)
    for r in t.itertuples():
        want = ref[(r.measure, r.band)]
        assert r.change == pytest.approx(want[0], rel=1e-4, abs=1e-6), (r.measure, r.band)
        assert r.base == pytest.approx(want[1], rel=1e-4), (r.measure, r.band)
        assert r.change > 0 and r.base > 0


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gemma3"])
def test_rope_is_shift_invariant_where_nothing_else_moved(tiny_models, name):
    """Layer 0's Q/K before RoPE see only the token: moving the text changes them not at all, and its
    logits only by rounding (RoPE depends on i - j); layer 1 has seen the prefix. A slice one position
    off would move layer 0 too."""
    model = tiny_models[name]
    lead, ids = _ids(model)
    t = relative_changes(shift_changes(model, ids, PREFIX, lead=lead, layers=[0, 1]))
    first, second = t[t.layer == 0], t[t.layer == 1]
    assert (first[first.measure != "logit"].change == 0).all()
    assert (first[first.measure == "logit"].relative < 1e-5).all()
    assert (second.relative > 1e-3).all()


def test_an_example_does_not_depend_on_its_batch_mates(tiny_models):
    model = tiny_models["tiny-llama"]
    lead, one = _ids(model)
    others = torch.cat([one, _ids(model, "Another text, at least as long as the first one is.")[1][:, : one.shape[1]]])
    alone = shift_changes(model, one, PREFIX, lead=lead, layers=[1])
    batch = shift_changes(model, others, PREFIX, lead=lead, layers=[1])
    mine = batch[batch.example == 0].reset_index(drop=True)
    np.testing.assert_allclose(mine[["change", "base"]], alone[["change", "base"]], rtol=1e-5)


def test_slow_band_least_reads_the_thirds_and_bad_input_is_refused(tiny_models):
    model = tiny_models["tiny-llama"]
    lead, ids = _ids(model)
    with pytest.raises(InputTypeError, match="empty prefix"):
        shift_changes(model, ids, [], lead=lead)
    with pytest.raises(InputTypeError, match="at least 3 tokens"):
        shift_changes(model, ids[:, :2], PREFIX, lead=lead)
    rel = relative_changes(shift_changes(model, ids, PREFIX, lead=lead, layers=[1]))
    slow = slow_band_least(rel)
    assert len(slow) == 3  # one row per measure
    low = rel[rel.band == "low"].set_index("measure").relative
    for r in slow.itertuples():
        assert r.low == low[r.measure]
        assert r.slow_least == (r.low < r.least_other)
    with pytest.raises(InputTypeError, match="a band per pair"):
        band_dims(model.rope, np.array(["high", "mid", "low"]))
