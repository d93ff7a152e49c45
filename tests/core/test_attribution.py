"""Attention logits split by RoPE pair sum to the model's own attention scores."""

import math

import pytest
import torch

from massmech.core import attribution
from massmech.core.attribution import attribute_logits, group_logits, pair_logits
from massmech.core.critical import band_prediction
from massmech.core.frequency import context_bands
from massmech.core.rope import RopeSpec
from massmech.errors import AnalysisError, IndexRangeError, InputTypeError

TEXT = "The quick brown fox jumps over the lazy dog, then again over the lazy cat."  # 75 bytes + BOS
MAX_ERR = {}  # model -> max abs error of the pairs' sum vs hook_attn_scores (reported by the session)


def _reference(model, tokens):
    """The model's own attention scores per layer, and the mask of entries it did not mask."""
    hooks = {layer: f"blocks.{layer}.attn.hook_attn_scores" for layer in range(model.info.n_layers)}
    scores = {k: v.float().cpu() for k, v in model.run_hooks(tokens, hooks).items()}
    return scores, {k: v > torch.finfo(torch.float32).min / 2 for k, v in scores.items()}


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-qwen2", "tiny-gemma3"])
def test_pairs_sum_to_the_models_attention_logits(tiny_models, name):
    """THE KEY TEST: sum over pairs == blocks.L.attn.hook_attn_scores to 1e-5 in fp32 (unmasked entries)."""
    model = tiny_models[name]
    tokens = torch.tensor(model.tokenize(TEXT))
    scores, unmasked = _reference(model, tokens)
    out = attribute_logits(model, tokens, check=False)
    assert sorted(out) == list(range(model.info.n_layers))
    worst = 0.0
    for layer, pl in out.items():
        assert pl.contributions.dtype == torch.float32 and pl.contributions.shape[-1] == model.rope.n_pairs
        assert unmasked[layer].sum() >= tokens.shape[1]  # at least the diagonal is compared
        assert scores[layer].abs()[unmasked[layer]].max() > 0.1  # logits of a real size, not all ~0
        err = (pl.total() - scores[layer])[unmasked[layer]].abs().max().item()
        assert err < 1e-5, f"{name} layer {layer}: pairs sum {err:.2e} away from hook_attn_scores"
        worst = max(worst, err)
        # and it fails when it should: one pair dropped, or 1/sqrt(d_head) where the model scales otherwise
        dropped = (pl.contributions[..., 1:].sum(-1) - scores[layer])[unmasked[layer]].abs().max().item()
        assert dropped > 1e-3
    MAX_ERR[name] = worst
    print(f"\n{name}: max |sum over pairs - hook_attn_scores| = {worst:.2e}")
    if name == "tiny-gemma3":  # query_pre_attn_scalar 256: 1/16, not d_head ** -0.5 = 1/4
        assert out[0].scale == 256**-0.5 != model.info.d_head**-0.5
        wrong = out[0].total() * (model.info.d_head**-0.5 / out[0].scale)
        assert (wrong - scores[0])[unmasked[0]].abs().max() > 1e-3
        assert (~unmasked[0]).sum() > (~torch.ones(tokens.shape[1], tokens.shape[1]).tril().bool()).sum()  # sliding window


def test_check_catches_a_wrong_scale(tiny_models, monkeypatch):
    model = tiny_models["tiny-gemma3"]
    tokens = torch.tensor(model.tokenize("hello there"))
    ok = attribute_logits(model, tokens, layers=[1])
    assert ok[1].max_error < 1e-5 and "max_error" in repr(ok[1])
    monkeypatch.setattr(attribution, "attention_scaling", lambda bridge, layer: (model.info.d_head**-0.5, None))
    with pytest.raises(AnalysisError, match="layer 1.*hook_attn_scores"):
        attribute_logits(model, tokens, layers=[1])


def _rotate(x, spec, positions):
    """RoPE applied by hand: pair p's dims (a, b) turn by position * freq_p. x: [pos, head, d]."""
    out = x.clone().double()
    freq = torch.tensor(spec.frequencies(0))
    for p in range(spec.n_pairs):
        a, b = spec.pair_dims(p)
        ang = positions[:, None].double() * freq[p]
        out[..., a] = x[..., a] * ang.cos() - x[..., b] * ang.sin()
        out[..., b] = x[..., a] * ang.sin() + x[..., b] * ang.cos()
    return out.float()


@pytest.mark.parametrize("layout", ["half", "adjacent"])
def test_each_pair_depends_on_relative_position_only(layout):
    """A constant pre-RoPE query/key: each pair's term is a function of i - j (its own frequency)."""
    spec = RopeSpec.from_base(100, 8, layout=layout)
    gen = torch.Generator().manual_seed(0)
    q0, k0 = torch.randn(1, 2, 8, generator=gen), torch.randn(1, 1, 8, generator=gen)
    pos = torch.arange(12)
    q, k = _rotate(q0.expand(12, 2, 8), spec, pos), _rotate(k0.expand(12, 1, 8), spec, pos)
    c = pair_logits(q, k, spec, 0, scale=0.5).contributions  # [head, q, k, pair]
    for p in range(spec.n_pairs):
        a, b = spec.pair_dims(p)
        theta = spec.frequencies(0)[p]
        for h in range(2):  # kv head 0 serves both query heads
            qa, qb, ka, kb = q0[0, h, a], q0[0, h, b], k0[0, 0, a], k0[0, 0, b]
            for i, j in [(5, 5), (7, 3), (11, 0)]:
                d = (j - i) * theta  # q_i . k_j = q0 . R(-i theta) R(j theta) k0 = q0 . R((j - i) theta) k0
                want = 0.5 * ((qa * ka + qb * kb) * math.cos(d) + (qb * ka - qa * kb) * math.sin(d))
                assert c[h, i, j, p].item() == pytest.approx(want.item(), abs=1e-5), (h, i, j, p)
    assert torch.allclose(c.sum(-1), 0.5 * torch.einsum("qhd,khd->hqk", q, k.expand(12, 2, 8)), atol=1e-5)


def test_partial_rotary_and_gqa_and_batch():
    spec = RopeSpec.from_base(10_000, 16, rotary_dim=8)
    gen = torch.Generator().manual_seed(1)
    q, k = torch.randn(3, 5, 4, 16, generator=gen), torch.randn(3, 6, 2, 16, generator=gen)  # 6 keys: a cache
    pl = pair_logits(q, k, spec, 0, scale=0.3)
    assert tuple(pl.contributions.shape) == (3, 4, 5, 6, 5) and pl.has_unrotated
    kk = k.repeat_interleave(2, dim=2)  # query heads 0, 1 -> kv head 0; 2, 3 -> kv head 1
    assert torch.allclose(pl.total(), 0.3 * torch.einsum("bqhd,bkhd->bhqk", q, kk), atol=1e-5)
    assert torch.allclose(pl.contributions[..., -1], 0.3 * torch.einsum("bqhd,bkhd->bhqk", q[..., 8:], kk[..., 8:]), atol=1e-5)
    assert torch.allclose(pl.contributions[0, 3, 1, 2, 1], 0.3 * (q[0, 1, 3, [1, 5]] * k[0, 2, 1, [1, 5]]).sum())
    unbatched = pair_logits(q[0], k[0], spec, 0, scale=0.3)
    assert torch.allclose(unbatched.contributions, pl.contributions[0])
    with pytest.raises(InputTypeError, match="kv heads"):
        pair_logits(q, k[..., :1, :].expand(3, 6, 3, 16), spec, 0, scale=1.0)
    with pytest.raises(InputTypeError, match="d_head"):
        pair_logits(q[..., :8], k[..., :8], spec, 0, scale=1.0)
    with pytest.raises(IndexRangeError):
        pair_logits(q, k, spec, 1, scale=1.0)


def test_group_logits_partition_the_total():
    spec = RopeSpec.from_base(10_000, 16, rotary_dim=12)
    gen = torch.Generator().manual_seed(2)
    pl = pair_logits(torch.randn(4, 2, 16, generator=gen), torch.randn(4, 2, 16, generator=gen), spec, 0, scale=1.0)
    for groups in (context_bands(spec, 0, 64), band_prediction(spec, 0, 64).groups(), {"a": [0, 2], "b": torch.tensor([5])}):
        out = group_logits(pl, groups)
        assert "unrotated" in out
        assert torch.allclose(sum(out.values()), pl.total(), atol=1e-6)
    assert list(group_logits(pl, {"a": [0, 2], "b": [5]})) == ["a", "other", "b", "unrotated"]
    with pytest.raises(AnalysisError, match="overlap"):
        group_logits(pl, {"a": [0, 1], "b": [1]})
    with pytest.raises(AnalysisError, match="shape"):
        group_logits(pl, {"a": [True, False]})
    with pytest.raises(IndexRangeError):
        group_logits(pl, {"a": [6]})


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gemma3"])
def test_band_logits_equal_the_pairs_grouped(tiny_models, name):
    """The matmul-per-band path (position shift) equals pair_logits + group_logits (GQA; partial rotary: its doctest)."""
    from massmech.core.attribution import band_logits
    from massmech.core.frequency import equal_count_bands

    model = tiny_models[name]
    tokens = torch.tensor(model.tokenize(TEXT))
    qk = {}
    attribution.query_logits(model, tokens, 5, layers=[1], keep=qk)
    q, k = qk[1]
    bands = equal_count_bands(model.rope.n_pairs, 3)
    fast = band_logits(q, k, model.rope, 1, bands, scale=0.25)
    slow = group_logits(pair_logits(q, k, model.rope, 1, scale=0.25), bands)
    assert list(fast) == list(slow) == ["high", "mid", "low"]
    for band in fast:
        torch.testing.assert_close(fast[band], slow[band], rtol=1e-5, atol=1e-5)
