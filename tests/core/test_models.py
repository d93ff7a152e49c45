import subprocess
import sys

import pytest
import torch

import massmech as mm
from massmech.core.tiny import tiny_model


def test_tiny_models_metadata(tiny):
    info = tiny.info
    assert info.n_layers >= 2 and info.d_head == 16 and info.dtype == "float32"
    assert info.has_rope == (info.name != "tiny-gpt2")
    assert info.qk_norm == (info.name == "tiny-gemma3")
    assert tiny.stages("v") == ("pre",)


def test_tiny_init_is_seeded():
    a, _ = tiny_model("tiny-llama", seed=3)
    b, _ = tiny_model("tiny-llama", seed=3)
    c, _ = tiny_model("tiny-llama", seed=4)
    wa, wb, wc = (m.model.layers[0].self_attn.q_proj.weight for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)


def test_no_rope_model_has_no_bands(tiny_models):
    gpt2 = tiny_models["tiny-gpt2"]
    with pytest.raises(mm.RopeError, match="no rotary position embedding"):
        _ = gpt2.rope
    assert gpt2.stages("q") == ("pre",)
    with pytest.raises(ValueError, match="no stage 'post'"):
        gpt2.hook_name("q", "post", 0)


def test_qk_norm_pre_site_is_normed_and_heads_first(tiny_models):
    g = tiny_models["tiny-gemma3"]
    assert g.hook_name("q", "pre", 1) == ("blocks.1.attn.hook_q_normed", True)
    assert g.hook_name("k", "post", 1) == ("blocks.1.attn.hook_rot_k", False)
    assert g.hook_name("v", "pre", 0) == ("blocks.0.attn.hook_v", False)
    acts = g.run_sites(g.probe_tokens(7), [("q", "pre"), ("k", "pre")], layers=[0])
    assert acts[("q", "pre", 0)].shape == (1, 7, 4, 16)
    assert acts[("k", "pre", 0)].shape == (1, 7, 1, 16)


def test_qk_norm_models_also_give_the_site_before_the_norm(tiny_models):
    """Issue 26, item 5: ``raw`` is the projection before QK-norm; ``pre`` is it normalised per
    (token, head) and scaled by one gain vector, so ``pre * rms(raw) / raw`` is that gain everywhere."""
    g = tiny_models["tiny-gemma3"]
    assert g.stages("q") == ("raw", "pre", "post") and g.stages("v") == ("pre",)
    assert g.hook_name("k", "raw", 1) == ("blocks.1.attn.hook_k", False)
    assert tiny_models["tiny-llama"].stages("q") == ("pre", "post")  # no QK-norm: no raw site
    for site in ("q", "k"):
        acts = g.run_sites(g.probe_tokens(9), [(site, "raw"), (site, "pre")], layers=[1])
        raw, normed = acts[(site, "raw", 1)].double(), acts[(site, "pre", 1)].double()
        gain = normed * raw.pow(2).mean(-1, keepdim=True).add(1e-6).sqrt() / raw  # [b, pos, head, d]
        flat = gain.reshape(-1, gain.shape[-1])
        assert torch.allclose(flat, flat[:1].expand_as(flat), rtol=1e-3, atol=1e-3), site
        assert not torch.allclose(raw, normed, rtol=0.1)  # the norm does change the values


def test_unknown_spec_lists_options():
    with pytest.raises(mm.ModelLoadError, match="smollm2-135m.*tiny-llama"):
        mm.load_model("no-such-model")


def test_missing_gguf_path():
    with pytest.raises(mm.ModelLoadError, match="GGUF file not found"):
        mm.load_model("/nonexistent/model.gguf")


def test_hub_without_network_names_offline_options():
    code = (
        "import massmech as mm\n"
        "try:\n    mm.load_model('some-org/some-model')\n"
        "except mm.ModelLoadError as e:\n    print('ERR', e)\n"
    )
    env = {"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert "ERR hub model 'some-org/some-model' is not in the local Hugging Face cache and HF_HUB_OFFLINE is set" in out.stdout
    assert "smollm2-135m" in out.stdout and out.stdout.rstrip().endswith("and pass its folder.")  # not cut


def test_hub_unreachable_fails_at_once(monkeypatch):
    """No network: one short connection probe, then a clear error; no download is attempted."""
    from huggingface_hub import constants

    import massmech.core.loading as models

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # the discard port: refused
    calls = []
    real = models._from_pretrained

    def spy(where, dtype, **kw):
        calls.append(kw.get("local_files_only", False))
        return real(where, dtype, **kw)

    monkeypatch.setattr(models, "_from_pretrained", spy)
    with pytest.raises(mm.ModelLoadError, match=r"cannot be reached \(127.0.0.1:9"):
        mm.load_model("some-org/some-model")
    assert calls == [True]  # the local cache was asked, the network never


def test_wrap_in_memory_tokenizer_and_doctor_inputs(tiny_models):
    """A tokenizer built in memory has no folder: wrap copes; doctor takes every kind of model."""
    import copy

    import transformers as tf
    from tokenizers import Tokenizer, models, pre_tokenizers

    from massmech.diagnostics.doctor import doctor

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {ch: i for i, ch in enumerate(alphabet)} | {"<pad>": 256, "<bos>": 257, "<eos>": 258}
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok = tf.PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>")
    assert "name_or_path" not in tok.init_kwargs or not tok.init_kwargs["name_or_path"]
    hf, _ = tiny_model("tiny-llama", seed=0)
    pristine = copy.deepcopy(hf.state_dict())
    verdict = doctor(hf, tok)  # the user's HF model is the reference and stays a plain HF model
    assert verdict["ok"] and verdict["checks"]["logits_match"] and verdict["skipped"] == {}
    assert all(torch.equal(v, hf.state_dict()[k]) for k, v in pristine.items())
    assert not any("Bridge" in type(m).__name__ for m in hf.modules())
    wrapped = mm.wrap(hf, tok)
    assert wrapped.tokenize("abc") == [list(tok("abc").input_ids)]
    verdict = doctor(wrapped)  # no pristine copy of a wrapped model: said, not silently passed
    assert "logits_match" not in verdict["checks"] and "pristine" in verdict["skipped"]["logits_match"]
    assert verdict["ok"] and verdict["max_abs_logit_diff"] is None
    verdict = doctor(tiny_models["tiny-qwen2"])  # a loaded model: reloaded from its spec as the reference
    assert verdict["checks"]["logits_match"] and verdict["max_abs_logit_diff"] <= 1e-4
    with pytest.raises(ValueError, match="needs its tokenizer"):
        doctor(hf)


def test_dtype_names():
    m = mm.load_model("tiny-llama", dtype="bfloat16")
    assert m.info.dtype == "bfloat16" and m.load_kwargs["dtype"] == "bfloat16"
    with pytest.raises(mm.ModelLoadError, match="unknown dtype"):
        mm.load_model("tiny-llama", dtype="float8")


def test_wrap_bridge_and_hf_model(tiny_models):
    llama = tiny_models["tiny-llama"]
    again = mm.wrap(llama.bridge, name="again")
    assert again.rope == llama.rope and again.info.name == "again"
    hf, tok = tiny_model("tiny-qwen2", seed=0)
    wrapped = mm.wrap(hf, tok)
    assert wrapped.rope.bases()[0] == pytest.approx(20000.0, rel=1e-6)
    with pytest.raises(ValueError, match="needs the tokenizer"):
        mm.wrap(hf)
    with pytest.raises(TypeError, match="TransformerBridge"):
        mm.wrap(object())


def test_wrap_refuses_a_tokenizer_larger_than_the_embedding(tiny_models):
    """Issue 25: a 259-token tokenizer on a 100-row embedding failed later with an IndexError."""
    from transformers import LlamaConfig, LlamaForCausalLM

    small = LlamaForCausalLM(LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2))
    with pytest.raises(ValueError, match="the tokenizer has 259 tokens but the model embeds only 100"):
        mm.wrap(small, tiny_models["tiny-llama"].tokenizer)


def test_cached_decoding_matches_a_full_forward(tiny):
    # transformers 5.2x passes the KV cache as `cache=`; without massmech's shim the bridge's
    # attention ignores it and every decode step attends to itself alone
    from massmech.core.decoder import cached_step_error

    ids = tiny.probe_tokens(20)
    assert cached_step_error(tiny, ids) < 1e-4
