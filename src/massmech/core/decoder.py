"""The Hugging Face model under the bridge: decoder blocks, their modules by role, and transformers' own calls.

Code outside :mod:`massmech.core` that edits or runs the plain model (the weight quantizers,
``doctor``, the twins' training) names *roles*, never Hugging Face module paths or attributes:

==================  ======================================================================
role                module, relative to a decoder block (Llama, Qwen2, Mistral, Gemma-3)
==================  ======================================================================
``q k v o``         ``self_attn.{q,k,v,o}_proj``
``gate up down``    ``mlp.{gate,up,down}_proj``
``attn``, ``mlp``   ``self_attn``, ``mlp`` (the sublayers)
``attn_norm``       ``input_layernorm`` (the norm in front of Q, K and V)
``mlp_norm``        the norm in front of the MLP: ``pre_feedforward_layernorm`` where the block
                    has one (Gemma-3), else ``post_attention_layernorm``
==================  ======================================================================

Every function here takes a :class:`~massmech.core.models.LoadedModel`, a TransformerLens bridge or
a plain Hugging Face causal LM (:func:`hf_of`); modules reached through a bridge are the ones it
runs, so editing their weights changes what it computes.
"""

from __future__ import annotations

import contextlib
import inspect
import re
import tempfile
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from massmech.core import bridge as _bridge
from massmech.core.bridge import clean_name, unwrap
from massmech.errors import QuantError, SmoothingError

ROLES: dict[str, str] = {
    "q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj", "o": "self_attn.o_proj",
    "gate": "mlp.gate_proj", "up": "mlp.up_proj", "down": "mlp.down_proj",
    "attn": "self_attn", "mlp": "mlp", "attn_norm": "input_layernorm",
}
_MLP_NORMS = ("pre_feedforward_layernorm", "post_attention_layernorm")  # the first the block has
_LAYER = re.compile(r"(?:^|\.)(?:layers|h)\.(\d+)\.")


def hf_of(model: Any) -> nn.Module:
    """The plain Hugging Face model of a ``LoadedModel``, a bridge, or a Hugging Face model itself.

    >>> import massmech as mm
    >>> model = mm.load_model("tiny-llama")
    >>> hf_of(model) is hf_of(model.bridge) is hf_of(hf_of(model))
    True
    """
    if is_hf_model(model):
        return model
    holder = getattr(model, "bridge", model)
    return _bridge.hf_model(holder) if _bridge.is_bridge(holder) else holder


def is_hf_model(obj: Any) -> bool:
    """Whether ``obj`` is a plain Hugging Face model (``PreTrainedModel``).

    >>> import massmech as mm
    >>> model = mm.load_model("tiny-llama")
    >>> is_hf_model(hf_of(model)), is_hf_model(model)
    (True, False)
    """
    from transformers import PreTrainedModel

    return isinstance(obj, PreTrainedModel)


# --------------------------------------------------------------------------- layout
def blocks(model: Any) -> nn.ModuleList:
    """The decoder blocks (``model.layers`` of a Llama-style causal LM).

    Raises:
        SmoothingError: The model has no Llama-style decoder layers (e.g. GPT-2).

    >>> import massmech as mm
    >>> len(blocks(mm.load_model("tiny-llama")))
    2
    """
    hf = hf_of(model)
    found = getattr(getattr(hf, "base_model", hf), "layers", None)
    if not isinstance(found, nn.ModuleList):
        raise SmoothingError(
            f"{type(hf).__name__} has no decoder layers at .model.layers: smoothquant and awq "
            "support Llama/Qwen2/Gemma-3 style decoders"
        )
    return found


def _names(block: nn.Module) -> set[str]:
    return {clean_name(n) for n, _ in block.named_modules()}


def role_name(block: nn.Module, role: str) -> str:
    """The Hugging Face name of ``role``'s module in ``block`` (relative to the block).

    >>> import massmech as mm
    >>> block = blocks(mm.load_model("tiny-gemma3"))[0]
    >>> role_name(block, "k"), role_name(block, "mlp_norm")
    ('self_attn.k_proj', 'pre_feedforward_layernorm')
    """
    if role == "mlp_norm":
        names = _names(block)
        return next((n for n in _MLP_NORMS if n in names), _MLP_NORMS[-1])
    if role not in ROLES:
        raise KeyError(f"unknown role {role!r}; choose from {[*ROLES, 'mlp_norm']}")
    return ROLES[role]


def missing_roles(block: nn.Module, roles: Sequence[str]) -> list[str]:
    """The roles of ``roles`` whose modules ``block`` lacks (bridge wrappers seen through).

    >>> import massmech as mm
    >>> missing_roles(blocks(mm.load_model("tiny-llama"))[0], ["q", "k", "gate", "mlp_norm"])
    []
    """
    names = _names(block)
    return [r for r in roles if role_name(block, r) not in names]


def module(block: nn.Module, role: str) -> nn.Module:
    """``role``'s module in ``block`` (the Hugging Face module, inside any bridge wrapper).

    >>> import massmech as mm
    >>> type(module(blocks(mm.load_model("tiny-llama"))[0], "q")).__name__
    'Linear'
    """
    mod = block
    for part in role_name(block, role).split("."):
        mod = getattr(unwrap(mod), part)
    return unwrap(mod)


def sandwich_norms(block: nn.Module) -> bool:
    """Whether ``block`` has a norm before and after each sublayer (Gemma-2/3), so that its
    ``mlp_norm`` is ``pre_feedforward_layernorm``.

    >>> import massmech as mm
    >>> [sandwich_norms(blocks(mm.load_model(m))[0]) for m in ("tiny-llama", "tiny-gemma3")]
    [False, True]
    """
    return role_name(block, "mlp_norm") == _MLP_NORMS[0]


def scales_by_one_plus(norm: nn.Module) -> bool:
    """Whether an RMSNorm multiplies by ``1 + weight`` (Gemma's) rather than by ``weight``.

    >>> import massmech as mm
    >>> [scales_by_one_plus(module(blocks(mm.load_model(m))[0], "attn_norm")) for m in ("tiny-llama", "tiny-gemma3")]
    [False, True]
    """
    return "Gemma" in type(norm).__name__


# --------------------------------------------------------------------------- linear layers
def linears(model: Any) -> dict[str, nn.Module]:
    """Every linear layer (``nn.Linear`` or GPT-2's ``Conv1D``) of the decoder blocks, by clean
    Hugging Face name; embeddings, norms and the LM head are not among them.

    >>> import massmech as mm
    >>> sorted(linears(mm.load_model("tiny-llama")))[:2]
    ['model.layers.0.mlp.down_proj', 'model.layers.0.mlp.gate_proj']
    """
    from transformers.pytorch_utils import Conv1D

    hf = hf_of(model)
    found = {}
    for name, mod in hf.named_modules():
        if isinstance(mod, (nn.Linear, Conv1D)) and not _bridge.is_wrapper(mod):
            clean = clean_name(name)
            if _LAYER.search(clean):
                found[clean] = mod
    if not found:
        raise QuantError(f"found no decoder linear layers in {type(hf).__name__}")
    return found


def linear_role(name: str) -> tuple[str | None, int]:
    """The role (``"q"``, ..., ``None`` for a layer of no role) and layer of a :func:`linears` name.

    >>> linear_role("model.layers.3.self_attn.k_proj"), linear_role("transformer.h.0.attn.c_attn")
    (('k', 3), (None, 0))
    """
    m = _LAYER.search(name)
    if m is None:
        raise KeyError(f"{name!r} is not a decoder layer's module")
    rest = name[m.end():]
    return next((r for r, path in ROLES.items() if rest == path), None), int(m.group(1))


def head_name(model: Any) -> str:
    """The name of the output embedding (the LM head) in the Hugging Face model.

    >>> import massmech as mm
    >>> head_name(mm.load_model("tiny-llama"))
    'lm_head'
    """
    hf = hf_of(model)
    head = hf.get_output_embeddings()
    return next((clean_name(n) for n, m in hf.named_modules() if m is head and n), "lm_head")


def weight_matrix(mod: nn.Module) -> Tensor:
    """A linear layer's weight as ``[out, in]`` (a view: GPT-2's ``Conv1D`` stores it transposed).

    >>> from torch import nn
    >>> tuple(weight_matrix(nn.Linear(3, 5)).shape)
    (5, 3)
    """
    from transformers.pytorch_utils import Conv1D

    return mod.weight.T if isinstance(mod, Conv1D) else mod.weight


def parameters(model: Any) -> dict[str, nn.Parameter]:
    """Every parameter of the Hugging Face model by its clean name (tied weights under each name).

    >>> import massmech as mm
    >>> next(iter(parameters(mm.load_model("tiny-llama"))))
    'model.embed_tokens.weight'
    """
    return {clean_name(n): p for n, p in hf_of(model).named_parameters(remove_duplicate=False)}


# --------------------------------------------------------------------------- transformers' calls
def lm_logits(model: Any, ids: Tensor, **kwargs: Any) -> Tensor:
    """The logits of a plain forward of the Hugging Face model (no bridge hook fires).

    >>> import massmech as mm, torch
    >>> lm_logits(mm.load_model("tiny-llama"), torch.tensor([[5, 6, 7]])).shape
    torch.Size([1, 3, 259])
    """
    hf = hf_of(model)
    return hf(ids.to(next(hf.parameters()).device), **kwargs).logits


def block_inputs(model: Any, windows: Sequence[Sequence[int]], batch_size: int) -> tuple[list[Tensor], list[list[dict]]]:
    """Hidden states entering block 0, per batch, and every block's keyword arguments (attention
    mask, position embeddings, ...), per batch: what a block-by-block calibration replays.

    >>> import massmech as mm
    >>> hidden, kwargs = block_inputs(mm.load_model("tiny-llama"), [[5, 6, 7]] * 3, batch_size=2)
    >>> [tuple(h.shape) for h in hidden], len(kwargs)
    ([(2, 3, 64), (1, 3, 64)], 2)
    """
    hf, layers = hf_of(model), blocks(model)
    device = next(hf.parameters()).device
    lengths = {len(w) for w in windows}
    if len(lengths) != 1:
        raise SmoothingError(f"calibration windows must have one length (no padding), got {sorted(lengths)}")
    hidden: list[Tensor] = []
    kwargs: list[list[dict]] = [[] for _ in layers]

    def grab(i: int) -> Callable:
        def hook(mod: nn.Module, args: tuple, kw: dict) -> None:
            if i == 0:
                hidden.append(args[0] if args else kw["hidden_states"])
            kwargs[i].append({k: v for k, v in kw.items() if k != "hidden_states"})
        return hook

    handles = [b.register_forward_pre_hook(grab(i), with_kwargs=True) for i, b in enumerate(layers)]
    try:
        with torch.no_grad():
            for start in range(0, len(windows), batch_size):
                ids = torch.tensor([list(w) for w in windows[start : start + batch_size]], device=device)
                hf(input_ids=ids, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return hidden, kwargs


def cached_step_error(model: Any, ids: Tensor) -> float:
    """Max |logit| difference between decoding the last token with the KV cache of the others and
    a full forward (the Hugging Face model inside the bridge: every bridge component is in the path).

    >>> import massmech as mm, torch
    >>> cached_step_error(mm.load_model("tiny-llama"), torch.tensor([[5, 6, 7, 8]])) < 1e-4
    True
    """
    hf = hf_of(model)
    ids = ids.to(next(hf.parameters()).device)
    # transformers >= 5.2x names the cache argument `cache` (`past_key_values` is deprecated)
    name = "cache" if "cache" in inspect.signature(hf.forward).parameters else "past_key_values"
    with torch.inference_mode():
        full = hf(ids).logits[:, -1].float()
        prefix = hf(ids[:, :-1], use_cache=True)
        cache = getattr(prefix, "cache", None) or prefix.past_key_values
        step = hf(ids[:, -1:], **{name: cache}, use_cache=True).logits[:, -1].float()
    return float((step - full).abs().max())


def config_rope(model: Any) -> Any:
    """The :class:`~massmech.core.rope.RopeSpec` the Hugging Face config describes.

    >>> import massmech as mm, numpy as np
    >>> model = mm.load_model("tiny-llama")  # its tables hold the frequencies in fp32
    >>> np.allclose(config_rope(model).inv_freq, model.rope.inv_freq, rtol=1e-6)
    True
    """
    from massmech.core.rope import RopeSpec

    return RopeSpec.from_hf_config(hf_of(model).config)


@contextlib.contextmanager
def saved_config(model: Any) -> Iterator[nn.Module]:
    """The Hugging Face model with its config saved to a temporary folder it names as its source,
    without a ``quantization_config`` (a model dequantized from GGUF still says ``"gguf"``), for
    tools that re-read the config from disk (llmcompressor's ``oneshot``); restored on exit.

    >>> import massmech as mm
    >>> model = mm.load_model("tiny-llama")
    >>> with saved_config(model) as hf:
    ...     import os; os.path.isfile(os.path.join(hf.config._name_or_path, "config.json"))
    True
    """
    hf = hf_of(model)
    config = hf.config
    old_path, old_qc = config._name_or_path, config.__dict__.pop("quantization_config", None)
    with tempfile.TemporaryDirectory() as tmp:
        config.save_pretrained(tmp)
        config._name_or_path = tmp
        try:
            yield hf
        finally:
            config._name_or_path = old_path
            if old_qc is not None:
                config.quantization_config = old_qc
