"""Tiny seeded random models for fast tests (Llama, Qwen2, Gemma-3, GPT-2, and the architecture
matrix: Mistral, Qwen3, Gemma-2, Phi-3, OLMo-2, GPT-NeoX, OPT), and a byte-level tokenizer."""

from __future__ import annotations

import functools
import tempfile
from typing import Any

import torch

from massmech.errors import ModelLoadError


# ------------------------------------------------------------------------ tiny models
@functools.lru_cache(maxsize=1)
def byte_tokenizer_dir() -> str:
    """A byte-level tokenizer (256 bytes + pad/bos/eos) saved to a temp folder.

    Saved and reloaded from disk because the bridge may re-load a tokenizer by its path.

    >>> from transformers import AutoTokenizer
    >>> tok = AutoTokenizer.from_pretrained(byte_tokenizer_dir())
    >>> len(tok), tok("hi").input_ids == [tok.bos_token_id, *tok("hi", add_special_tokens=False).input_ids]
    (259, True)
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    for special in ("<pad>", "<bos>", "<eos>"):
        vocab[special] = len(vocab)
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A <bos> $B", special_tokens=[("<bos>", vocab["<bos>"])]
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>"
    )
    path = tempfile.mkdtemp(prefix="massmech-bytetok-")
    tok.save_pretrained(path)
    return path


TINY_ROPE_THETA = {"tiny-llama": 5_000.0, "tiny-qwen2": 20_000.0}
# The architecture matrix (tests/test_architectures.py, docs/architectures.md): one tiny random
# config per family the bridge can wrap; OPT is a non-RoPE control like GPT-2.
TINY_ARCHS = {
    "tiny-mistral": ("MistralConfig", "MistralForCausalLM", {"num_key_value_heads": 2}),
    "tiny-qwen3": ("Qwen3Config", "Qwen3ForCausalLM", {"num_key_value_heads": 2, "head_dim": 16}),
    "tiny-gemma2": ("Gemma2Config", "Gemma2ForCausalLM", {"num_key_value_heads": 2, "head_dim": 16}),
    "tiny-phi3": ("Phi3Config", "Phi3ForCausalLM", {"num_key_value_heads": 2}),
    "tiny-olmo2": ("Olmo2Config", "Olmo2ForCausalLM", {"num_key_value_heads": 2}),
    "tiny-neox": ("GPTNeoXConfig", "GPTNeoXForCausalLM", {"rotary_pct": 0.5}),
    "tiny-opt": ("OPTConfig", "OPTForCausalLM", {"word_embed_proj_dim": 64}),
}
TINY_GEMMA3_THETA = {"sliding_attention": 10_000.0, "full_attention": 1_000_000.0}


def tiny_model(name: str, seed: int) -> tuple[Any, Any]:
    """A tiny seeded random Hugging Face model of a family, with the byte-level tokenizer.

    Args:
        name: ``tiny-llama``, ``tiny-qwen2``, ``tiny-gemma3``, ``tiny-gpt2`` or one of
            :data:`TINY_ARCHS` (the architecture matrix).
        seed: Seed of the random init (the same seed gives the same weights).

    Returns:
        ``(hf_model, tokenizer)``, the model in eval mode with eager attention.

    >>> model, tok = tiny_model("tiny-llama", seed=0)
    >>> type(model).__name__, model.config.num_hidden_layers, model.config.hidden_size
    ('LlamaForCausalLM', 2, 64)
    >>> import torch
    >>> torch.equal(model.lm_head.weight, tiny_model("tiny-llama", seed=0)[0].lm_head.weight)
    True
    """
    import transformers as tf

    tok = tf.PreTrainedTokenizerFast.from_pretrained(byte_tokenizer_dir())
    common = dict(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_attention_heads=4,
        max_position_embeddings=4096,  # real task prompts fit (byte tokens: one per character)
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        attn_implementation="eager",
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if name in TINY_ROPE_THETA:
            cfg_cls, model_cls = {
                "tiny-llama": (tf.LlamaConfig, tf.LlamaForCausalLM),
                "tiny-qwen2": (tf.Qwen2Config, tf.Qwen2ForCausalLM),
            }[name]
            cfg = cfg_cls(
                num_hidden_layers=2, num_key_value_heads=2, rope_theta=TINY_ROPE_THETA[name], **common
            )
            model = model_cls(cfg)
        elif name == "tiny-gemma3":
            cfg = tf.Gemma3TextConfig(
                num_hidden_layers=3,
                num_key_value_heads=1,
                head_dim=16,
                sliding_window=16,
                layer_types=["sliding_attention", "sliding_attention", "full_attention"],
                rope_parameters={
                    t: {"rope_type": "default", "rope_theta": b} for t, b in TINY_GEMMA3_THETA.items()
                },
                **common,
            )
            model = tf.Gemma3ForCausalLM(cfg)
        elif name in TINY_ARCHS:
            cfg_name, model_name, extra = TINY_ARCHS[name]
            kwargs = dict(common, num_hidden_layers=2) | extra
            if name == "tiny-opt":  # OPT names its MLP width ffn_dim
                kwargs["ffn_dim"] = kwargs.pop("intermediate_size")
            model = getattr(tf, model_name)(getattr(tf, cfg_name)(**kwargs))
        elif name == "tiny-gpt2":
            cfg = tf.GPT2Config(
                vocab_size=len(tok),
                n_embd=64,
                n_layer=2,
                n_head=4,
                n_positions=512,
                bos_token_id=tok.bos_token_id,
                eos_token_id=tok.eos_token_id,
                attn_implementation="eager",
            )
            model = tf.GPT2LMHeadModel(cfg)
        else:  # pragma: no cover - guarded by the caller
            raise ModelLoadError(f"unknown tiny model {name!r}")
    model.config.architectures = [type(model).__name__]
    return model.eval(), tok
