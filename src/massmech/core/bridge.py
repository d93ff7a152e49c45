"""The boundary with TransformerLens' ``TransformerBridge``: the one module that touches its internals.

It boots a bridge around a Hugging Face model, keeps transformers' KV cache visible to the
bridge's attention, reaches the wrapped HF model (``original_model``) and strips the bridge's
``_original_component`` wrapper names. Everything else in massmech goes through these functions
or through TransformerLens' public hook API.
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path
from typing import Any


# --------------------------------------------------------------------------- loading
def kv_cache_compat() -> None:
    """Let TransformerLens' bridge attention see transformers' KV cache (idempotent).

    transformers >= 5.2x hands the cache to attention modules as ``cache=``; TransformerLens
    4.3's attention bridges look only for ``past_key_values``/``layer_past``, find nothing and
    skip the cache update, so every cached decode step attends to itself alone (generation
    through the bridge silently ignores the prompt). This forwards ``cache`` under the name
    the bridge reads. ``tests/core/test_models.py`` checks cached decoding against a full forward.

    >>> kv_cache_compat(); kv_cache_compat()  # installs the shim once
    >>> from transformer_lens.model_bridge.generalized_components.attention import AttentionBridge
    >>> AttentionBridge._update_kv_cache._massmech_compat
    True
    """
    from transformer_lens.model_bridge.generalized_components.attention import AttentionBridge

    original = AttentionBridge._update_kv_cache
    if getattr(original, "_massmech_compat", False):
        return

    def _update_kv_cache(self, k, v, **kwargs):
        if kwargs.get("past_key_values") is None and kwargs.get("layer_past") is None and kwargs.get("cache") is not None:
            kwargs["past_key_values"] = kwargs["cache"]
        return original(self, k, v, **kwargs)

    _update_kv_cache._massmech_compat = True  # type: ignore[attr-defined]
    AttentionBridge._update_kv_cache = _update_kv_cache


def reloadable_tokenizer(tokenizer: Any) -> Any:
    """The tokenizer, or an equal copy saved to disk if it cannot be re-opened by its path.

    The bridge re-opens a tokenizer from ``name_or_path`` to add a BOS token; a tokenizer built
    in memory has no such path (``KeyError: 'name_or_path'`` inside TransformerLens).

    >>> from massmech.core.tiny import tiny_model
    >>> _, tok = tiny_model("tiny-llama", seed=0)
    >>> reloadable_tokenizer(tok) is tok  # read from a folder: re-openable as it is
    True
    """
    where = tokenizer.init_kwargs.get("name_or_path") or getattr(tokenizer, "name_or_path", "")
    if where and Path(where).is_dir() and any(
        (Path(where) / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")
    ):
        return tokenizer
    if where and not Path(where).exists() and "/" in str(where) and tokenizer.init_kwargs.get("name_or_path"):
        return tokenizer  # a hub id, re-opened from the local hub cache
    from transformers import AutoTokenizer

    folder = tempfile.mkdtemp(prefix="massmech-tokenizer-")
    tokenizer.save_pretrained(folder)
    return AutoTokenizer.from_pretrained(folder)


def _reopens(tokenizer: Any) -> bool:
    """Whether TransformerLens' ``get_tokenizer_with_bos`` would re-open this tokenizer from its path
    (it has a BOS token, and ``add_bos_token`` in its ``init_kwargs``, else its attribute, is falsy)."""
    flag = tokenizer.init_kwargs.get("add_bos_token")
    return tokenizer.bos_token is not None and not (getattr(tokenizer, "add_bos_token", False) if flag is None else flag)


def _clone_backend(backend: Any) -> Any:
    """A ``tokenizers.Tokenizer`` equal to ``backend`` (same ``to_str()``), made without re-parsing it.

    The vocabulary model, normalizer, pre-tokenizer, decoder and post-processor objects are shared
    (transformers and TransformerLens replace these, never edit them in place); the added tokens,
    truncation and padding are the clone's own, so tokens added to one do not reach the other.
    """
    from tokenizers import Tokenizer

    clone = Tokenizer(backend.model)
    for part in ("normalizer", "pre_tokenizer", "post_processor", "decoder"):
        if getattr(backend, part) is not None:
            setattr(clone, part, getattr(backend, part))
    added = backend.get_added_tokens_decoder()  # id -> AddedToken; re-added in id order, keeping the ids
    run: list = []
    for token in [added[i] for i in sorted(added)] + [None]:  # one call per run of (non-)special tokens:
        if run and (token is None or token.special != run[-1].special):  # one at a time is quadratic
            (clone.add_special_tokens if run[-1].special else clone.add_tokens)(run)
            run = []
        run.append(token)
    if backend.truncation:
        clone.enable_truncation(**backend.truncation)
    if backend.padding:
        clone.enable_padding(**backend.padding)
    clone.encode_special_tokens = backend.encode_special_tokens
    if clone.get_added_tokens_decoder() != added:  # ids came out otherwise: copy it the slow way
        return Tokenizer.from_str(backend.to_str())
    return clone


def bridge_tokenizer(tokenizer: Any) -> Any:
    """The tokenizer to hand the bridge: the one TransformerLens would make, made without re-parsing.

    TransformerLens' ``get_tokenizer_with_bos`` re-opens a tokenizer whose ``add_bos_token`` is
    falsy from its ``name_or_path`` with ``add_bos_token=True`` (parsing ``tokenizer.json`` again:
    about 2.5 s for Gemma-3's 262k tokens), then edits what it got (padding side, missing special
    tokens). For a fast tokenizer this returns that tokenizer ready-made: a copy of ``tokenizer``
    with ``add_bos_token=True`` (which TransformerLens keeps as it is), sharing the parsed
    vocabulary, so TransformerLens' edits land on the copy and ``tokenizer`` stays as it was.
    Other tokenizers go through :func:`reloadable_tokenizer`, as TransformerLens handles them.

    >>> from massmech.core.tiny import tiny_model
    >>> _, tok = tiny_model("tiny-llama", seed=0)
    >>> twin = bridge_tokenizer(tok)
    >>> twin is tok, twin.add_bos_token, tok.add_bos_token, twin("hi").input_ids == tok("hi").input_ids
    (False, True, False, True)
    """
    from transformers import TokenizersBackend

    if not (_reopens(tokenizer) and isinstance(tokenizer, TokenizersBackend)):
        return reloadable_tokenizer(tokenizer)
    vocab = {k: v for k, v in vars(tokenizer).items() if k in ("_vocab", "_merges")}  # read only at __init__
    memo = {id(tokenizer._tokenizer): _clone_backend(tokenizer._tokenizer), **{id(v): v for v in vocab.values()}}
    twin = copy.deepcopy(tokenizer, memo)
    twin.init_kwargs.setdefault("name_or_path", tokenizer.name_or_path)  # TransformerLens pops it
    twin.init_kwargs["add_bos_token"] = True  # as from_pretrained(..., add_bos_token=True) records it
    if hasattr(twin, "_should_update_post_processor"):
        twin._should_update_post_processor = True  # likewise (an explicit add_bos_token sets it)
    twin.add_bos_token = True  # rebuilds the post-processor with BOS, as __init__ does
    return twin


def boot(hf_model: Any, tokenizer: Any, name: str) -> Any:
    """Boot a ``TransformerBridge`` around a Hugging Face causal LM (no hub call).

    The model is put in eval mode and its config gains ``architectures`` if missing; the bridge
    wraps its modules (see :func:`massmech.wrap`, which builds a ``LoadedModel`` on top).

    Args:
        hf_model: The Hugging Face model; modified in place.
        tokenizer: Its tokenizer; the bridge gets :func:`bridge_tokenizer` of it.
        name: The bridge's model name.

    >>> from massmech.core.tiny import tiny_model
    >>> hf, tok = tiny_model("tiny-llama", seed=0)
    >>> bridge = boot(hf, tok, "mine")
    >>> is_bridge(bridge), is_bridge(hf), bridge.cfg.n_layers
    (True, False, 2)
    """
    from transformer_lens.model_bridge import TransformerBridge

    kv_cache_compat()
    if not getattr(hf_model.config, "architectures", None):
        hf_model.config.architectures = [type(hf_model).__name__]
    hf_model.eval()
    bridge = TransformerBridge.boot_transformers(name, hf_model=hf_model, tokenizer=bridge_tokenizer(tokenizer))
    bridge.eval()
    return bridge


_WRAPPER = "_original_component"  # the attribute a bridge component keeps the HF module under


def hf_model(bridge: Any) -> Any:
    """The Hugging Face model a ``TransformerBridge`` (or a ``LoadedModel``) wraps.

    Modules reached through it are the ones the bridge runs, so editing their weights changes
    what the bridge computes.

    >>> import massmech as mm
    >>> model = mm.load_model("tiny-llama")
    >>> type(hf_model(model)).__name__, hf_model(model) is hf_model(model.bridge)
    ('LlamaForCausalLM', True)
    """
    bridge = getattr(bridge, "bridge", bridge)  # a LoadedModel holds its bridge
    return bridge.original_model


def unwrap(module: Any) -> Any:
    """The HF module inside a bridge component, or the module itself if it is not wrapped.

    >>> import massmech as mm
    >>> blocks = mm.load_model("tiny-llama").bridge.blocks
    >>> type(blocks[0]).__name__, type(unwrap(blocks[0])).__name__, unwrap(unwrap(blocks[0])) is unwrap(blocks[0])
    ('BlockBridge', 'LlamaDecoderLayer', True)
    """
    return getattr(module, _WRAPPER, module)


def is_wrapper(module: Any) -> bool:
    """Whether ``module`` is a bridge component that wraps an HF module.

    >>> import massmech as mm
    >>> block = mm.load_model("tiny-llama").bridge.blocks[0]
    >>> is_wrapper(block), is_wrapper(unwrap(block))
    (True, False)
    """
    import torch.nn as nn

    return isinstance(getattr(module, _WRAPPER, None), nn.Module)


def clean_name(name: str) -> str:
    """A parameter or module name as the plain HF model spells it (bridge wrapper levels removed).

    >>> clean_name("model.layers.0._original_component.self_attn._original_component.q_proj.weight")
    'model.layers.0.self_attn.q_proj.weight'
    """
    return name.replace(f"{_WRAPPER}.", "").replace(f".{_WRAPPER}", "")


def is_bridge(model: Any) -> bool:
    """Whether ``model`` is a TransformerLens ``TransformerBridge``.

    >>> import massmech as mm
    >>> model = mm.load_model("tiny-llama")
    >>> is_bridge(model.bridge), is_bridge(model)
    (True, False)
    """
    from transformer_lens.model_bridge import TransformerBridge

    return isinstance(model, TransformerBridge)


def attention_scaling(bridge: Any, layer: int) -> tuple[float, float | None]:
    """The factor a layer's attention multiplies ``q . k`` by, and its logit softcap (or ``None``).

    Read where the bridge's attention reads them: the HF attention module's ``scaling`` (Gemma's
    ``query_pre_attn_scalar ** -0.5``, not always ``d_head ** -0.5``) and
    ``attn_logit_softcapping`` (Gemma 2), with the bridge's own fallback ``head_dim ** -0.5``.

    >>> import massmech as mm
    >>> attention_scaling(mm.load_model("tiny-llama").bridge, 0), attention_scaling(mm.load_model("tiny-gemma3").bridge, 0)
    ((0.25, None), (0.0625, None))
    """
    bridge = getattr(bridge, "bridge", bridge)  # a LoadedModel holds its bridge
    attn = unwrap(bridge.blocks[layer].attn)
    head_dim = getattr(attn, "head_dim", None) or int(bridge.cfg.d_head)
    softcap = getattr(attn, "attn_logit_softcapping", None)
    return float(getattr(attn, "scaling", head_dim**-0.5)), None if softcap is None else float(softcap)


class _Stopped(Exception):
    """Raised by the hook that ends a :func:`forward_until` pass."""


def forward_until(bridge: Any, ids: Any, mask: Any = None, *, until: str | None = None) -> None:
    """One forward pass for its hooks only, ending where hook ``until`` fires (the rest is skipped).

    Hooks registered before the pass fire as in a full pass up to ``until``; what comes after it
    is not computed (from ``ln_final.hook_in``: the final norm and the unembedding, most of a short
    pass of a model with a large vocabulary, 262k tokens for Gemma-3). ``until=None``, or a hook
    the bridge does not have: a full pass.

    >>> import massmech as mm, torch
    >>> model, seen = mm.load_model("tiny-llama"), []
    >>> with model.hooks([(h, lambda x, hook, h=h: seen.append(h)) for h in ("blocks.1.attn.hook_k", "unembed.hook_in")]):
    ...     forward_until(model.bridge, torch.tensor([[5, 6, 7]]), until="ln_final.hook_in")
    >>> seen
    ['blocks.1.attn.hook_k']
    """
    if until is None or until not in bridge.hook_dict:
        return bridge(ids, attention_mask=mask, return_type=None)

    def stop(x: Any, hook: Any) -> None:
        raise _Stopped

    try:
        with bridge.hooks(fwd_hooks=[(until, stop)]):
            bridge(ids, attention_mask=mask, return_type=None)
    except _Stopped:
        pass
    return None


def final_logits(bridge: Any, ids: Any, mask: Any, rows: Any, cols: Any) -> Any:
    """Logits ``[len(rows), vocab]`` (fp32) at ``(rows[i], cols[i])`` of one forward pass.

    Runs the Hugging Face model inside the bridge (so every bridge hook fires) up to the final
    norm, gathers the positions, then unembeds only those, with the model's final logit softcap.

    >>> import massmech as mm, torch
    >>> model = mm.load_model("tiny-llama")
    >>> ids = torch.tensor([[5, 6, 7]])
    >>> out = final_logits(model.bridge, ids, torch.ones_like(ids), torch.tensor([0]), torch.tensor([2]))
    >>> full = model.bridge(ids, return_type="logits")[0, 2]
    >>> out.shape, torch.allclose(out[0], full.float(), atol=1e-5)
    (torch.Size([1, 259]), True)
    """
    hf = hf_model(bridge)
    hidden = hf.base_model(input_ids=ids, attention_mask=mask).last_hidden_state  # [b, pos, d]
    return _unembed(hf, hidden[rows.to(hidden.device), cols.to(hidden.device)])


def next_token_nll(bridge: Any, ids: Any, mask: Any) -> Any:
    """Negative log-likelihood ``[batch, pos - 1]`` (fp32) of each next token, from one forward pass.

    Unembeds one row at a time, so that one row's fp32 logits (``pos x vocab``) are held at once,
    not the batch's: Gemma-3's 262k vocabulary at 8 x 512 tokens would hold 4.3 GB of logits and as
    much again for their log-softmax. Every bridge hook fires, as in :func:`final_logits`; padding
    is not masked here (mask ``mask[:, 1:]`` yourself).

    >>> import massmech as mm, torch
    >>> model = mm.load_model("tiny-llama")
    >>> ids = torch.tensor([[5, 6, 7], [8, 9, 9]])
    >>> nll = next_token_nll(model.bridge, ids, torch.ones_like(ids))
    >>> full = torch.log_softmax(model.logits(ids).float(), -1)[:, :-1].gather(-1, ids[:, 1:, None])[..., 0]
    >>> nll.shape, torch.allclose(nll, -full, atol=1e-5)
    (torch.Size([2, 2]), True)
    """
    import torch

    from massmech.stats import token_nll

    hf = hf_model(bridge)
    hidden = hf.base_model(input_ids=ids, attention_mask=mask).last_hidden_state  # [b, pos, d]
    return torch.cat([token_nll(_unembed(hf, h)[None], row[None]) for h, row in zip(hidden, ids, strict=True)])


def _unembed(hf: Any, hidden: Any) -> Any:
    """fp32 logits of final hidden states ``[n, d]``, with the model's final logit softcap."""
    import torch

    logits = hf.get_output_embeddings()(hidden).float()
    cap = getattr(hf.config, "final_logit_softcapping", None)
    return torch.tanh(logits / cap) * cap if cap else logits


def prefill(bridge: Any, ids: Any, mask: Any) -> tuple[Any, Any]:
    """One pass over left-padded prompts: fp32 logits ``[batch, vocab]`` at each last position,
    and the KV cache to continue them with :func:`continue_prompts`.

    Positions count real tokens only (``cumsum(mask) - 1``), so a padded prompt is read at the
    positions it has alone. Every bridge hook fires, as in :func:`final_logits`.

    >>> import massmech as mm, torch
    >>> model = mm.load_model("tiny-llama")
    >>> last, cache = prefill(model.bridge, torch.tensor([[0, 5, 6], [7, 8, 9]]), torch.tensor([[0, 1, 1], [1, 1, 1]]))
    >>> torch.allclose(last[0], model.logits(torch.tensor([[5, 6]]))[0, -1].float(), atol=1e-5)
    True
    """
    mask = mask.long()
    out = hf_model(bridge).base_model(input_ids=ids, attention_mask=mask, position_ids=_positions(mask),
                                      use_cache=True)
    return _unembed(hf_model(bridge), out.last_hidden_state[:, -1]), out.cache


def continue_prompts(bridge: Any, cache: Any, mask: Any, index: Any, tails: Any, tail_mask: Any, rows: Any,
                     cols: Any) -> Any:
    """Teacher-forced continuations of prefilled prompts: fp32 logits ``[len(rows), vocab]`` at
    ``(rows[i], cols[i])`` of right-padded ``tails`` ``[n, m]``, tail ``j`` read after prompt
    ``index[j]`` of :func:`prefill`'s cache (``mask``: the prompts' mask). Several tails may
    continue one prompt; the cache is consumed.

    >>> import massmech as mm, torch
    >>> model = mm.load_model("tiny-llama")
    >>> mask = torch.tensor([[0, 1, 1]])
    >>> _, cache = prefill(model.bridge, torch.tensor([[0, 5, 6]]), mask)
    >>> tails, tail_mask = torch.tensor([[7, 8], [9, 0]]), torch.tensor([[1, 1], [1, 0]])
    >>> out = continue_prompts(model.bridge, cache, mask, torch.tensor([0, 0]), tails, tail_mask,
    ...                        torch.tensor([0, 0, 1]), torch.tensor([0, 1, 0]))
    >>> full = model.logits(torch.tensor([[5, 6, 7, 8], [5, 6, 9, 9]])).float()
    >>> torch.allclose(out, torch.stack([full[0, 2], full[0, 3], full[1, 2]]), atol=1e-5)
    True
    """
    import torch

    cache.reorder_cache(index.to(tails.device))
    before = mask.long()[index]
    full = torch.cat([before, tail_mask.long()], 1)
    hf = hf_model(bridge)
    hidden = hf.base_model(input_ids=tails, attention_mask=full, position_ids=_positions(full)[:, before.shape[1]:],
                           cache=cache, use_cache=True).last_hidden_state
    return _unembed(hf, hidden[rows.to(hidden.device), cols.to(hidden.device)])


def _positions(mask: Any) -> Any:
    """Position ids that count real tokens only (0 at padding before them)."""
    return (mask.cumsum(-1) - 1).clamp(min=0)


def greedy_generate(bridge: Any, ids: Any, mask: Any, *, max_new_tokens: int, pad_id: int,
                    stop_ids: tuple[int, ...] = ()) -> Any:
    """Greedy continuations ``[batch, max_new_tokens]`` of left-padded ``ids`` (the bridge's hooks
    fire on the prefill and on every decode step). With ``stop_ids`` a row ends at its first stop
    token (kept; ``pad_id`` after it) and generation ends when every row has; without, it never stops.

    >>> import massmech as mm, torch
    >>> model = mm.load_model("tiny-llama")
    >>> ids = torch.tensor([[5, 6, 7]])
    >>> new = greedy_generate(model.bridge, ids, torch.ones_like(ids), max_new_tokens=1, pad_id=0)
    >>> new.item() == model.logits(ids)[0, -1].argmax().item()  # one greedy step: the last logit's argmax
    True
    >>> out = greedy_generate(model.bridge, ids, torch.ones_like(ids), max_new_tokens=3, pad_id=0, stop_ids=(new.item(),))
    >>> out[0, 0].item() == new.item(), out[0, 1:].tolist()  # stopped at once, padded to the width asked for
    (True, [0, 0])
    """
    import torch

    out = hf_model(bridge).generate(
        input_ids=ids, attention_mask=mask.long(), max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
        repetition_penalty=1.0, pad_token_id=pad_id, eos_token_id=list(stop_ids) or None, temperature=None,
        top_p=None, top_k=None,
    )[:, ids.shape[1]:]
    short = max_new_tokens - out.shape[1]  # every row stopped early
    return torch.nn.functional.pad(out, (0, short), value=pad_id) if short > 0 else out


def stop_ids(bridge: Any, tokenizer: Any) -> tuple[int, ...]:
    """The tokens that end a reply: the tokenizer's EOS and the model's generation config's
    ``eos_token_id`` (which lists a chat template's end of turn where the model's config does, as
    SmolLM2-Instruct's ``<|im_end|>``), as ``generate`` stops at them by default. A token the
    config does not list (Gemma-3-270M base: ``<end_of_turn>``) does not end a reply.

    >>> import massmech as mm
    >>> model = mm.load_model("tiny-llama")
    >>> stop_ids(model.bridge, model.tokenizer)  # the byte-level test tokenizer's EOS
    (258,)
    """
    ids = [tokenizer.eos_token_id]
    config = getattr(hf_model(bridge), "generation_config", None)
    extra = getattr(config, "eos_token_id", None)
    ids += extra if isinstance(extra, (list, tuple)) else [extra]
    return tuple(dict.fromkeys(int(i) for i in ids if i is not None))
