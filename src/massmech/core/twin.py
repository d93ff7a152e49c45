"""Controlled twins: small Llama-style models that differ only in their position mechanism.

A twin is a Llama decoder (RMSNorm, SwiGLU, no biases) with one of three position mechanisms:

* ``rope``: rotary embedding of Q and K with base ``rope_theta`` (plain Llama);
* ``absolute``: learned absolute position embeddings added to the token embeddings (as in GPT-2),
  and no rotation;
* ``nope``: no position signal at all but the causal mask.

The non-rotary twins keep Llama's attention code: their rotary module returns ``cos = 1`` and
``sin = 0`` at every position, so the "rotation" is the identity (``hook_rot_q`` equals
``hook_q`` bit for bit) and :class:`~massmech.core.models.LoadedModel` reports them as models
without RoPE. Everything else — shapes, initial values of every shared parameter, data and its
order — is the same, so any difference in Q/K/V statistics is caused by the position mechanism.

The models are ordinary Hugging Face modules (``TwinLlamaForCausalLM``, registered with the
``Auto*`` classes under ``model_type="massmech_twin"``) that the TransformerLens bridge wraps
with its Llama adapter, so :func:`massmech.wrap`, capture, detection and disruption work on them
unchanged. They live in core because they are models like any other (a study trains them:
:mod:`massmech.studies.twins.train`; the study is :mod:`massmech.studies.twins.study`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, LlamaModel

from massmech.core.positions import check_mechanism
from massmech.errors import TwinError


class TwinLlamaConfig(LlamaConfig):
    """A transformers ``LlamaConfig`` plus ``position`` (one of :data:`~massmech.core.positions.MECHANISMS`).

    >>> TwinLlamaConfig(position="nope").position, TwinLlamaConfig().model_type
    ('nope', 'massmech_twin')
    """

    model_type = "massmech_twin"

    def __init__(self, position: str = "rope", **kwargs: Any) -> None:
        self.position = check_mechanism(position)
        # TransformerLens picks its adapter from this name first: a twin is bridged as Llama.
        self.original_architecture = "LlamaForCausalLM"
        super().__init__(**kwargs)


class NoRotation(nn.Module):
    """Stands in for the rotary module: ``cos = 1``, ``sin = 0`` everywhere (identity rotation).

    >>> cos, sin = NoRotation(4).forward(torch.zeros(1), torch.arange(3)[None])
    >>> tuple(cos.shape), bool((cos == 1).all() and (sin == 0).all())
    ((1, 3, 4), True)
    """

    def __init__(self, head_dim: int) -> None:
        super().__init__()
        self.head_dim = head_dim

    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (*position_ids.shape, self.head_dim)  # [batch, pos, head_dim]
        return x.new_ones(shape), x.new_zeros(shape)


class TwinLlamaModel(LlamaModel):
    """Llama body with the twin's position mechanism.

    >>> cfg = twin_config("absolute", vocab_size=50, d_model=16, n_layers=1, n_heads=2, d_mlp=32, max_positions=8)
    >>> TwinLlamaModel(cfg).forward(input_ids=torch.tensor([[1, 2, 3]])).last_hidden_state.shape
    torch.Size([1, 3, 16])
    """

    config_class = TwinLlamaConfig

    def __init__(self, config: TwinLlamaConfig) -> None:
        super().__init__(config)
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        self.embed_positions = None
        if config.position == "absolute":
            self.embed_positions = nn.Embedding(config.max_position_embeddings, config.hidden_size)
            nn.init.normal_(self.embed_positions.weight, std=config.initializer_range)
        if config.position != "rope":
            self.rotary_emb = NoRotation(head_dim)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cache: Any = None,
        inputs_embeds: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> Any:
        if cache is None:
            cache = kwargs.pop("past_key_values", None)
        if self.embed_positions is not None:
            if inputs_embeds is None:
                inputs_embeds = self.embed_tokens(input_ids)  # [batch, pos, d_model]
                input_ids = None
            if position_ids is None:
                past = cache.get_seq_length() if cache is not None else 0
                position_ids = (torch.arange(inputs_embeds.shape[1], device=inputs_embeds.device) + past)[None]
            if int(position_ids.max()) >= self.embed_positions.num_embeddings:
                raise TwinError(
                    f"position {int(position_ids.max())} is beyond the {self.embed_positions.num_embeddings} "
                    "learned positions of this absolute-position twin"
                )
            inputs_embeds = inputs_embeds + self.embed_positions(position_ids)
        return super().forward(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            **kwargs,
        )


class TwinLlamaForCausalLM(LlamaForCausalLM):
    """Causal LM head on :class:`TwinLlamaModel`.

    >>> cfg = twin_config("nope", vocab_size=50, d_model=16, n_layers=1, n_heads=2, d_mlp=32, max_positions=8)
    >>> TwinLlamaForCausalLM(cfg)(torch.tensor([[1, 2, 3]])).logits.shape
    torch.Size([1, 3, 50])
    """

    config_class = TwinLlamaConfig

    def __init__(self, config: TwinLlamaConfig) -> None:
        super().__init__(config)
        self.model = TwinLlamaModel(config)
        self.post_init()


AutoConfig.register(TwinLlamaConfig.model_type, TwinLlamaConfig, exist_ok=True)
AutoModelForCausalLM.register(TwinLlamaConfig, TwinLlamaForCausalLM, exist_ok=True)


def twin_config(
    mechanism: str,
    *,
    vocab_size: int,
    d_model: int,
    n_layers: int,
    n_heads: int,
    d_mlp: int,
    max_positions: int,
    rope_theta: float = 10_000.0,
    special_ids: dict[str, int] | None = None,
) -> TwinLlamaConfig:
    """The Hugging Face config of one twin.

    >>> cfg = twin_config("rope", vocab_size=50, d_model=16, n_layers=1, n_heads=2, d_mlp=32, max_positions=8)
    >>> cfg.position, cfg.head_dim, cfg.num_key_value_heads
    ('rope', 8, 2)
    """
    if d_model % n_heads:
        raise TwinError(f"d_model {d_model} is not divisible by n_heads {n_heads}")
    if (d_model // n_heads) % 2:
        raise TwinError(f"d_head {d_model // n_heads} must be even (RoPE rotates pairs)")
    ids = special_ids or {}
    return TwinLlamaConfig(
        position=check_mechanism(mechanism),
        vocab_size=vocab_size,
        hidden_size=d_model,
        intermediate_size=d_mlp,
        num_hidden_layers=n_layers,
        num_attention_heads=n_heads,
        num_key_value_heads=n_heads,
        max_position_embeddings=max_positions,
        rope_theta=float(rope_theta),
        tie_word_embeddings=False,
        attn_implementation="eager",
        pad_token_id=ids.get("pad"),
        bos_token_id=ids.get("bos"),
        eos_token_id=ids.get("eos"),
    )


def build_twin(config: TwinLlamaConfig, init: dict[str, torch.Tensor], position_seed: int) -> TwinLlamaForCausalLM:
    """A twin whose shared parameters are copied from ``init`` (the initial weights of all twins).

    Args:
        config: The twin's config.
        init: State dict of the shared parameters (:func:`initial_weights`).
        position_seed: Seed of the learned position table (``absolute`` twins only).

    >>> cfg = twin_config("absolute", vocab_size=50, d_model=16, n_layers=1, n_heads=2, d_mlp=32, max_positions=8)
    >>> init = initial_weights(cfg, seed=0)
    >>> twin = build_twin(cfg, init, position_seed=1)
    >>> torch.equal(twin.model.embed_tokens.weight, init["model.embed_tokens.weight"]), twin.model.embed_positions.num_embeddings
    (True, 8)
    """
    model = TwinLlamaForCausalLM(config)
    state = model.state_dict()
    extra = set(state) - set(init)
    allowed = {"model.embed_positions.weight"}
    if extra - allowed or set(init) - set(state):
        raise TwinError(f"twin parameters differ from the shared init: {sorted((extra - allowed) | (set(init) - set(state)))}")
    model.load_state_dict(init, strict=False)
    if model.model.embed_positions is not None:
        g = torch.Generator().manual_seed(position_seed)
        with torch.no_grad():
            w = model.model.embed_positions.weight
            w.copy_(torch.randn(w.shape, generator=g) * config.initializer_range)
    return model


def initial_weights(config: TwinLlamaConfig, seed: int) -> dict[str, torch.Tensor]:
    """Seeded initial values of every parameter the twins share (built from a ``rope`` twin).

    >>> cfg = twin_config("nope", vocab_size=50, d_model=16, n_layers=1, n_heads=2, d_mlp=32, max_positions=8)
    >>> a, b = initial_weights(cfg, seed=0), initial_weights(cfg, seed=0)
    >>> all(torch.equal(a[k], b[k]) for k in a), "model.embed_tokens.weight" in a
    (True, True)
    """
    shared = TwinLlamaConfig(**{**config.to_dict(), "position": "rope"})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = TwinLlamaForCausalLM(shared)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@contextlib.contextmanager
def _quiet_hf() -> Iterator[None]:
    """Silence transformers' per-file progress bars (many small checkpoints)."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


def save_twin(model: TwinLlamaForCausalLM, path: str | os.PathLike) -> None:
    """Save a twin (safetensors and its config) to the folder ``path``; :func:`load_twin` reads it.

    >>> import tempfile
    >>> cfg = twin_config("absolute", vocab_size=50, d_model=16, n_layers=1, n_heads=2, d_mlp=32, max_positions=8)
    >>> twin, folder = build_twin(cfg, initial_weights(cfg, seed=0), position_seed=1), tempfile.mkdtemp()
    >>> save_twin(twin, folder)
    >>> sorted(os.listdir(folder))
    ['config.json', 'generation_config.json', 'model.safetensors']
    """
    with _quiet_hf():
        model.save_pretrained(str(path))


def load_twin(path: str | os.PathLike) -> TwinLlamaForCausalLM:
    """A saved twin, with the eager attention it was trained with (bit-exact resumption).

    >>> import tempfile
    >>> cfg = twin_config("absolute", vocab_size=50, d_model=16, n_layers=1, n_heads=2, d_mlp=32, max_positions=8)
    >>> twin, folder = build_twin(cfg, initial_weights(cfg, seed=0), position_seed=1), tempfile.mkdtemp()
    >>> save_twin(twin, folder)
    >>> back = load_twin(folder)
    >>> back.config.position, torch.equal(back.model.embed_positions.weight, twin.model.embed_positions.weight)
    ('absolute', True)
    """
    with _quiet_hf():
        return TwinLlamaForCausalLM.from_pretrained(str(path), attn_implementation="eager")


def fast_tokenizer(tokenizer: Any, path: str | os.PathLike, *, pad: str, bos: str, eos: str,
                   extra: Sequence[str] = ()) -> Any:
    """A ``tokenizers.Tokenizer`` as a transformers fast tokenizer with its special tokens, saved
    to the folder ``path`` (:func:`load_tokenizer` reads it).

    >>> import tempfile
    >>> from tokenizers import Tokenizer, models, pre_tokenizers
    >>> tk = Tokenizer(models.WordLevel({"<pad>": 0, "<bos>": 1, "<eos>": 2, "hi": 3}, unk_token="<pad>"))
    >>> tk.pre_tokenizer = pre_tokenizers.Whitespace()
    >>> folder = tempfile.mkdtemp()
    >>> tok = fast_tokenizer(tk, folder, pad="<pad>", bos="<bos>", eos="<eos>")
    >>> tok("hi hi")["input_ids"], tok.pad_token_id
    ([3, 3], 0)
    """
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token=pad, bos_token=bos, eos_token=eos,
                                  additional_special_tokens=list(extra))
    tok.save_pretrained(str(path))
    return tok


def load_tokenizer(path: str | os.PathLike) -> Any:
    """A fast tokenizer saved by :func:`fast_tokenizer` (``save_pretrained``), from its folder.

    >>> import tempfile
    >>> from tokenizers import Tokenizer, models
    >>> folder = tempfile.mkdtemp()
    >>> _ = fast_tokenizer(Tokenizer(models.WordLevel({"<pad>": 0, "<bos>": 1, "<eos>": 2}, unk_token="<pad>")),
    ...                    folder, pad="<pad>", bos="<bos>", eos="<eos>")
    >>> load_tokenizer(folder).convert_tokens_to_ids(["<bos>", "<eos>"])
    [1, 2]
    """
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast.from_pretrained(str(path))
