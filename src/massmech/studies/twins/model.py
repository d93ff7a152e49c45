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
unchanged. Training lives in :mod:`massmech.studies.twins.train`, the study in :mod:`massmech.studies.twins.study`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, LlamaModel

from massmech.errors import TwinError
from massmech.studies.twins.vocabulary import check_mechanism


class TwinLlamaConfig(LlamaConfig):
    """A :class:`~transformers.LlamaConfig` plus ``position`` (one of :data:`MECHANISMS`)."""

    model_type = "massmech_twin"

    def __init__(self, position: str = "rope", **kwargs: Any) -> None:
        self.position = check_mechanism(position)
        # TransformerLens picks its adapter from this name first: a twin is bridged as Llama.
        self.original_architecture = "LlamaForCausalLM"
        super().__init__(**kwargs)


class NoRotation(nn.Module):
    """Stands in for the rotary module: ``cos = 1``, ``sin = 0`` everywhere (identity rotation)."""

    def __init__(self, head_dim: int) -> None:
        super().__init__()
        self.head_dim = head_dim

    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (*position_ids.shape, self.head_dim)  # [batch, pos, head_dim]
        return x.new_ones(shape), x.new_zeros(shape)


class TwinLlamaModel(LlamaModel):
    """Llama body with the twin's position mechanism."""

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
    """Causal LM head on :class:`TwinLlamaModel`."""

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
    """The Hugging Face config of one twin."""
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
    """Seeded initial values of every parameter the twins share (built from a ``rope`` twin)."""
    shared = TwinLlamaConfig(**{**config.to_dict(), "position": "rope"})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = TwinLlamaForCausalLM(shared)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@contextlib.contextmanager
def quiet_hf() -> Iterator[None]:
    """Silence transformers' per-file progress bars (many small checkpoints)."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


def load_twin(path: str | os.PathLike) -> TwinLlamaForCausalLM:
    """A saved twin, with the eager attention it was trained with (bit-exact resumption)."""
    with quiet_hf():
        return TwinLlamaForCausalLM.from_pretrained(str(path), attn_implementation="eager")
