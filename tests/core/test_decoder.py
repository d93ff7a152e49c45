"""The Hugging Face decoder's layout by role: what the quantizers, doctor and the twins name instead of module paths."""

from __future__ import annotations

import pytest
import torch

from massmech.core import decoder
from massmech.core.bridge import unwrap
from massmech.core.loading import load_hf, load_model
from massmech.errors import SmoothingError
from massmech.studies.quant.smoothing import ScaleMap, block_maps

ARCHS = ["tiny-llama", "tiny-qwen2", "tiny-gemma3"]


@pytest.mark.parametrize("name", ARCHS)
def test_every_role_is_the_module_hugging_face_names(name):
    hf, *_ = load_hf(name)
    block = hf.model.layers[1]  # written out by hand: the layout the roles stand for
    by_hand = {"q": block.self_attn.q_proj, "k": block.self_attn.k_proj, "v": block.self_attn.v_proj,
               "o": block.self_attn.o_proj, "gate": block.mlp.gate_proj, "up": block.mlp.up_proj,
               "down": block.mlp.down_proj, "attn": block.self_attn, "mlp": block.mlp,
               "attn_norm": block.input_layernorm,
               "mlp_norm": block.pre_feedforward_layernorm if name == "tiny-gemma3" else block.post_attention_layernorm}
    assert {r: decoder.module(decoder.blocks(hf)[1], r) for r in by_hand} == by_hand
    # through the bridge: the same modules, seen through its wrappers
    lm = load_model(name)
    wrapped = decoder.blocks(lm)[1]
    assert decoder.module(wrapped, "k") is unwrap(unwrap(unwrap(wrapped).self_attn).k_proj)
    assert decoder.sandwich_norms(block) == (name == "tiny-gemma3")


@pytest.mark.parametrize("name", ARCHS)
def test_linear_roles_name_every_decoder_projection(name):
    lm = load_model(name)
    found = {n: decoder.linear_role(n) for n in decoder.linears(lm)}
    n_layers = lm.info.n_layers
    roles = sorted({r for r, _ in found.values()})
    assert roles == sorted(["q", "k", "v", "o", "gate", "up", "down"])
    assert sorted(layer for r, layer in found.values() if r == "q") == list(range(n_layers))
    for n, (r, layer) in found.items():
        assert n.endswith(decoder.ROLES[r]) and f"layers.{layer}." in n
    assert decoder.head_name(lm) not in found  # the LM head is not a decoder linear


def test_block_maps_are_the_hand_written_mappings():
    hf, *_ = load_hf("tiny-llama")
    block = hf.model.layers[0]
    qkv = ScaleMap("input_layernorm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), "self_attn")
    mlp = ScaleMap("post_attention_layernorm", ("mlp.gate_proj", "mlp.up_proj"), "mlp")
    assert block_maps(block, awq=False) == [qkv, mlp]
    vo = [ScaleMap("self_attn.v_proj", ("self_attn.o_proj",), "self_attn.o_proj")] \
        if block.self_attn.v_proj.out_features == block.self_attn.o_proj.in_features else []
    assert block_maps(block, awq=True) == [qkv, *vo, mlp, ScaleMap("mlp.up_proj", ("mlp.down_proj",), "mlp.down_proj")]
    gemma = load_hf("tiny-gemma3")[0].model.layers[0]
    assert [m.smooth for m in block_maps(gemma, awq=True)][0] != "input_layernorm"


def test_a_block_without_the_roles_is_refused_by_name():
    hf, *_ = load_hf("tiny-gpt2")
    with pytest.raises(SmoothingError, match="no decoder layers"):
        decoder.blocks(hf)
    assert decoder.missing_roles(hf.transformer.h[0], ["q", "attn_norm"]) == ["q", "attn_norm"]
    with pytest.raises(KeyError, match="unknown role"):
        decoder.role_name(hf.transformer.h[0], "qkv")
    assert decoder.linear_role("transformer.h.0.attn.c_attn") == (None, 0)


def test_saved_config_restores_what_it_changed():
    hf, *_ = load_hf("tiny-llama")
    hf.config.quantization_config = {"quant_method": "gguf"}
    before = (hf.config._name_or_path, dict(hf.config.quantization_config))
    with decoder.saved_config(hf) as same:
        assert same is hf and "quantization_config" not in hf.config.__dict__
        assert hf.config._name_or_path != before[0]
    assert (hf.config._name_or_path, hf.config.quantization_config) == before


def test_lm_logits_and_the_cached_step_match_the_bridge():
    lm = load_model("tiny-qwen2")
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        assert torch.allclose(decoder.lm_logits(lm, ids), lm.logits(ids), atol=1e-5)
    assert decoder.cached_step_error(lm, ids) < 1e-4
