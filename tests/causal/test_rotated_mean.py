"""Rotation-consistent replacement (``replace="rotated_mean"``, issue 27 part 3): the model's own RoPE
tables applied by :class:`massmech.core.rotation.Rotation`, against complex-number references on both
layouts, partial rotary and scaled tables, and through the hooks of tiny models."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_intervention import _observe  # tests/causal: the activation after a disruption's hook

from massmech.causal.batch import batch_masks
from massmech.causal.disruption import Disruption
from massmech.causal.evaluate import evaluate, generate_exact
from massmech.causal.intervention import Intervention
from massmech.causal.tasks.builtin import get_task
from massmech.core.models import pad_batch
from massmech.core.rotation import Rotation, rotate_pairs
from massmech.core.sites import table_hooks
from massmech.errors import DisruptionError, RopeError


def _partner(i: int, layout: str, rotary: int) -> int:
    """The second dim of ``i``'s pair, from the two conventions (HF rotate_half; GPT-J), not from massmech."""
    if layout == "half":
        return i + rotary // 2
    return i + 1


def _firsts(layout: str, rotary: int) -> list[int]:
    return list(range(rotary // 2)) if layout == "half" else list(range(0, rotary, 2))


def _rotate_by_hand(x: np.ndarray, angle: np.ndarray, amp: float, layout: str, rotary: int) -> np.ndarray:
    """x [pos, d] turned by angle [pos, pair] with amplitude amp, pair by pair as complex numbers."""
    out = x.astype(np.complex128).real.copy()
    for p, i in enumerate(_firsts(layout, rotary)):
        j = _partner(i, layout, rotary)
        z = (x[:, i] + 1j * x[:, j]) * amp * np.exp(1j * angle[:, p])
        out[:, i], out[:, j] = z.real, z.imag
    return out


@pytest.mark.parametrize(("layout", "rotary"), [("half", 8), ("adjacent", 8), ("half", 4), ("adjacent", 4)])
@pytest.mark.parametrize("amp", [1.0, 1.25])
def test_rotation_matches_complex_numbers(layout, rotary, amp):
    pos, d = 6, 8
    freq = 10.0 ** -np.arange(rotary // 2)
    angle = np.arange(pos)[:, None] * freq[None]  # [pos, pair]
    cols = np.concatenate([angle, angle], -1) if layout == "half" else np.repeat(angle, 2, -1)
    cos, sin = (torch.tensor(amp * f(cols), dtype=torch.float32)[None] for f in (np.cos, np.sin))
    rot = Rotation(cos, sin, layout)
    x = torch.randn(1, pos, 1, d, generator=torch.Generator().manual_seed(0))
    want = _rotate_by_hand(x[0, :, 0].double().numpy(), angle, amp, layout, rotary)
    np.testing.assert_allclose(rot.apply(x)[0, :, 0].numpy(), want, rtol=1e-5, atol=1e-6)
    assert torch.equal(rot.apply(x)[..., rotary:], x[..., rotary:])  # partial rotary: the rest is untouched
    torch.testing.assert_close(rot.undo(rot.apply(x)), x, rtol=1e-5, atol=1e-6)
    # a [rows, head, d] vector is placed at every position
    torch.testing.assert_close(rot.apply(x[:, 2]), rot.apply(x[:, 2:3].expand(-1, pos, -1, -1)))


def test_rotation_refuses_what_does_not_fit():
    with pytest.raises(RopeError, match="must be"):
        Rotation(torch.ones(1, 3, 3), torch.ones(1, 3, 3), "half")
    with pytest.raises(RopeError, match="do not fit"):
        Rotation(torch.ones(1, 3, 4), torch.zeros(1, 3, 4), "half").apply(torch.ones(1, 5, 2, 4))
    with pytest.raises(RopeError, match="layout"):
        rotate_pairs(torch.ones(4), "interleaved")


def _tables(model, tokens, layer):
    seen, hooks = {}, []
    for name in table_hooks(layer):
        hooks.append((name, lambda x, hook: seen.__setitem__(hook.name, x.detach().clone())))
    with torch.inference_mode(), model.bridge.hooks(fwd_hooks=hooks):
        model.bridge(tokens, return_type=None)
    return [seen[n] for n in table_hooks(layer)]


def test_rotation_is_the_models_own_rope(tiny_rope):
    """Rotation with the tables a model fired turns its pre-RoPE Q/K into its post-RoPE Q/K, and back."""
    tokens = tiny_rope.probe_tokens(9).repeat(2, 1)
    layer = tiny_rope.info.n_layers - 1
    cos, sin = _tables(tiny_rope, tokens, layer)
    rot = Rotation(cos, sin, tiny_rope.rope.layout).rows(torch.arange(2))
    for site in ("q", "k"):
        got = tiny_rope.run_sites(tokens, [(site, "pre"), (site, "post")], layers=[layer])
        pre, post = got[(site, "pre", layer)].float(), got[(site, "post", layer)].float()
        torch.testing.assert_close(rot.apply(pre), post, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(rot.undo(post), pre, rtol=1e-5, atol=1e-5)


def test_rotated_mean_matches_hand_computation(tiny_rope):
    """Post-RoPE Q of layer 0: the chosen dim holds the pre-RoPE prompt mean of its pair turned by the model's
    frequencies (from RopeSpec, not the tables), at every position; every other value is bit-identical."""
    model, n, dim = tiny_rope, 10, 1
    tokens = model.probe_tokens(n)
    spec = model.rope
    d = Disruption(target="q", stage="post", rule="dims", dims=(dim,), layers=(0,), replace="rotated_mean")
    got = model.run_sites(tokens, [("q", "pre"), ("q", "post")], layers=[0])
    pre, before = got[("q", "pre", 0)].double()[0], got[("q", "post", 0)].float()  # pre: [pos, head, d]
    after, _ = _observe(model, d, tokens, "q", 0)
    angle = np.arange(n)[:, None] * spec.frequencies(0)[None]  # [pos, pair]
    mean = pre.mean(0).numpy()  # [head, d]
    for h in range(pre.shape[1]):
        want = _rotate_by_hand(np.broadcast_to(mean[h], (n, mean.shape[-1])), angle, spec.scaling[0], spec.layout,
                               spec.rotary_dim)
        np.testing.assert_allclose(after[0, :, h, dim].numpy(), want[:, dim], rtol=1e-4, atol=1e-5)
    changed = torch.zeros_like(after, dtype=torch.bool)
    changed[..., dim] = True
    assert torch.equal(after[~changed], before[~changed])
    assert not torch.allclose(after[..., dim], before[..., dim])


def test_rotated_mean_of_whole_pairs_is_the_pre_rope_mean(tiny_rope):
    """Replacing whole pairs after RoPE by the rotated mean is replacing them before RoPE by the mean."""
    model = tiny_rope
    tokens = model.probe_tokens(12).repeat(2, 1)
    tokens[1] = tokens[1].flip(0)
    dims = model.rope.pair_dims(0)[:1]  # the fastest pair, named by one of its dims: a post-RoPE mean is far off
    with torch.inference_mode():
        runs = {"none": model.logits(tokens).float()}
    for stage, replace in (("pre", "mean"), ("post", "rotated_mean"), ("post", "mean")):
        d = Disruption(stage=stage, rule="dims", dims=dims, replace=replace, granularity="pair")
        with torch.inference_mode(), model.hooks(Intervention(model, [d]).fwd_hooks):
            runs[stage, replace] = model.logits(tokens).float()
    base = runs["pre", "mean"]
    effect = (base - runs["none"]).abs().max()  # a random tiny model's logits move little: compare with this
    assert (runs["post", "rotated_mean"] - base).abs().max() < 1e-2 * effect
    assert (runs["post", "mean"] - base).abs().max() > 0.05 * effect  # the plain mean of rotated vectors is not that


def _generate(model, prompts, conditions, n_new=3):
    """Left-padded greedy generation of ``prompts`` (row i under condition i): tokens, removed variance."""
    iv = Intervention(model, conditions)
    ids, mask = pad_batch(prompts, model.pad_id, left=True)
    iv.set_batch(torch.arange(len(prompts)), mask, row_ids=torch.arange(len(prompts)))
    with torch.inference_mode(), iv.active(), batch_masks(mask):
        gen = model.generate(ids, mask, n_new)
    return gen, iv.last_removed.clone()


def test_rotated_mean_is_batch_invariant_under_left_padding(tiny_models):
    """Generation left-pads each batch: every row turns by its own positions' tables, prompt and decode steps."""
    model = tiny_models["tiny-llama"]
    prompts = [model.probe_tokens(12)[0].tolist(), model.probe_tokens(12)[0, :7].flip(0).tolist()]
    for cache in ("prefill", "every_step"):
        d = Disruption(stage="post", rule="topk", k=1, replace="rotated_mean", kv_cache=cache)
        gen, removed = _generate(model, prompts, [d, d])
        for i, p in enumerate(prompts):
            gen_i, removed_i = _generate(model, [p], [d])
            assert torch.equal(gen[i], gen_i[0])
            torch.testing.assert_close(removed[i], removed_i[0], rtol=1e-5, atol=1e-7)
    task = get_task("kv_lookup", n_pairs=3)  # the evaluation paths: teacher-forced (right padding) and generated
    d = Disruption(stage="post", rule="topk", k=1, replace="rotated_mean")
    forced = evaluate(model, task, {"rot": d}, n=4, progress=False)
    generated = generate_exact(model, task, {"rot": d}, n=4, batch_size=4, progress=False)
    assert forced.correct.equals(generated.correct)
    np.testing.assert_allclose(forced.removed_variance, generated.removed_variance, rtol=1e-4)


def test_rotated_mean_is_named_and_refused_where_meaningless(tiny_models):
    d = Disruption(stage="post", rule="topk", k=1, replace="rotated_mean")
    assert d.label() == "qk.post.top1.rotated_mean" and "pre-RoPE prompt mean rotated" in d.protocol()
    assert Disruption.from_dict(d.to_dict()) == d
    with pytest.raises(DisruptionError, match="use stage='post'"):
        Disruption(stage="pre", replace="rotated_mean")
    with pytest.raises(DisruptionError, match="no 'post' stage"):
        d.validate(tiny_models["tiny-gpt2"])
