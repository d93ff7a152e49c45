import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import massmech as mm
from massmech.core.rope import RopeSpec, rope_spec_from_tables
from massmech.core.tiny import TINY_GEMMA3_THETA, TINY_ROPE_THETA


def _hf_inv_freq(model, layer):
    """The inverse frequencies the HF rotary module holds (independent of our reading)."""
    rot = model.bridge.original_model.model.rotary_emb
    if hasattr(rot, "inv_freq"):
        return rot.inv_freq.double()
    layer_type = model.bridge.original_model.config.layer_types[layer]
    return getattr(rot, f"{layer_type}_inv_freq").double()


def test_spec_matches_hf_inv_freq_exactly(tiny_rope):
    spec = tiny_rope.rope
    assert spec.layout == "half" and spec.rotary_dim == 16
    for layer in range(spec.n_layers):
        np.testing.assert_allclose(spec.frequencies(layer), _hf_inv_freq(tiny_rope, layer), rtol=1e-6)


def test_known_bases_including_gemma_local_global(tiny_models):
    for name, theta in TINY_ROPE_THETA.items():
        assert tiny_models[name].rope.bases() == pytest.approx([theta] * 2, rel=1e-5)
    g = tiny_models["tiny-gemma3"]
    types = g.bridge.original_model.config.layer_types
    assert g.rope.bases() == pytest.approx([TINY_GEMMA3_THETA[t] for t in types], rel=1e-5)
    assert g.rope.base(0) != pytest.approx(g.rope.base(2))


def test_partial_rotary_neox():
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, PreTrainedTokenizerFast

    from massmech.core.tiny import byte_tokenizer_dir

    tok = PreTrainedTokenizerFast.from_pretrained(byte_tokenizer_dir())
    torch.manual_seed(0)
    cfg = GPTNeoXConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=128, rotary_pct=0.5,
        rotary_emb_base=777.0, attn_implementation="eager",
    )
    model = mm.wrap(GPTNeoXForCausalLM(cfg), tok, name="tiny-neox")
    spec = model.rope
    assert spec.rotary_dim == 8 and spec.d_head == 16 and spec.n_pairs == 4
    assert spec.bases() == pytest.approx([777.0, 777.0], rel=1e-5)
    assert list(spec.dim_to_pair()) == [0, 1, 2, 3, 0, 1, 2, 3] + [-1] * 8
    # This bridge has no post-RoPE hooks for NeoX: verification must say so, not pass silently.
    with pytest.raises(mm.RopeError, match="no post-RoPE hook"):
        mm.verify_rope(model)


def _tables(freqs, n_pos, layout, scale=1.0):
    pos = torch.arange(n_pos, dtype=torch.float64)[:, None]
    ang = pos * torch.tensor(freqs, dtype=torch.float64)[None]
    if layout == "half":
        ang = torch.cat([ang, ang], -1)
    else:
        ang = ang.repeat_interleave(2, -1)
    return (scale * ang.cos())[None].float(), (scale * ang.sin())[None].float()


def test_adjacent_layout_from_tables():
    freqs = [1.0, 0.1, 0.01]
    cos, sin = _tables(freqs, 16, "adjacent", scale=1.3)
    spec = rope_spec_from_tables(cos, sin, d_head=8)
    assert spec.layout == "adjacent" and spec.rotary_dim == 6
    np.testing.assert_allclose(spec.frequencies(0), freqs, rtol=1e-5)
    assert spec.scaling[0] == pytest.approx(1.3, rel=1e-6)
    assert spec.pair_dims(1) == (2, 3)
    assert list(spec.dim_to_pair()) == [0, 0, 1, 1, 2, 2, -1, -1]


def test_tables_that_are_not_rope_are_rejected():
    cos, sin = _tables([1.0, 0.1], 16, "half")
    with pytest.raises(mm.RopeError, match="neither rotate_half nor adjacent"):
        rope_spec_from_tables(cos, torch.rand_like(sin), d_head=4)
    quad = torch.arange(16.0)[:, None] ** 2 * torch.tensor([0.01, 0.001])  # angle not linear in position
    quad = torch.cat([quad, quad], -1)[None]
    with pytest.raises(mm.RopeError, match="not a rotation linear in position"):
        rope_spec_from_tables(quad.cos(), quad.sin(), d_head=4)


@settings(max_examples=40, deadline=None)
@given(base=st.floats(100.0, 2e6), n_pairs=st.integers(2, 64), layout=st.sampled_from(["half", "adjacent"]))
def test_base_recovered_from_tables(base, n_pairs, layout):
    rot = 2 * n_pairs
    freqs = [base ** (-2 * i / rot) for i in range(n_pairs)]
    cos, sin = _tables(freqs, 8, layout)
    spec = rope_spec_from_tables(cos, sin, d_head=rot)
    assert spec.layout == layout
    assert spec.base(0) == pytest.approx(base, rel=1e-3)
    assert spec.wavelengths(0)[-1] == pytest.approx(2 * math.pi / freqs[-1], rel=1e-3)


def test_verify_rope_passes_on_tiny_models(tiny_rope):
    report = mm.verify_rope(tiny_rope)
    assert report.ok
    assert report.fitted_bases == pytest.approx(report.spec_bases, rel=1e-3)
    assert len(report.checks) == 2 * tiny_rope.info.n_layers


def test_verify_rope_fails_loudly_on_wrong_spec(tiny_models):
    model = mm.wrap(tiny_models["tiny-llama"].bridge)
    good = model.rope
    wrong = RopeSpec(
        d_head=good.d_head, rotary_dim=good.rotary_dim, layout=good.layout,
        inv_freq=tuple(tuple(f * 1.01 for f in layer) for layer in good.inv_freq),
        scaling=good.scaling,
    )
    model._rope = wrong
    with pytest.raises(mm.RopeError, match="disagrees"):
        mm.verify_rope(model)
    swapped = RopeSpec(
        d_head=good.d_head, rotary_dim=good.rotary_dim, layout="adjacent",
        inv_freq=good.inv_freq, scaling=good.scaling,
    )
    model._rope = swapped
    assert not mm.verify_rope(model, raise_on_failure=False).ok


def test_spec_json_roundtrip(tiny_models):
    spec = tiny_models["tiny-gemma3"].rope
    assert RopeSpec.from_dict(spec.to_dict()) == spec


def test_layer_out_of_range(tiny_models):
    with pytest.raises(IndexError, match="out of range"):
        tiny_models["tiny-llama"].rope.frequencies(5)


def test_low_precision_model_still_reads_its_rope():
    model = mm.load_model("tiny-llama", dtype=torch.bfloat16)
    assert model.info.dtype == "bfloat16"
    assert model.rope.bases() == pytest.approx([TINY_ROPE_THETA["tiny-llama"]] * 2, rel=0.05)
    assert mm.verify_rope(model).ok  # with the bf16 tolerances
