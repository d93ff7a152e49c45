"""A loaded model: TransformerLens bridge + tokenizer + the model's true RoPE spec + metadata.

:class:`LoadedModel` probes its bridge once (which hooks fire, the cos/sin tables RoPE is read
from, see :mod:`massmech.core.rope`) and maps sites to hooks (:mod:`massmech.core.sites`).
:func:`wrap` turns a model you built yourself into one; :func:`massmech.load_model` loads by spec.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from massmech.core import bridge as _bridge
from massmech.core.bridge import boot, is_bridge, kv_cache_compat
from massmech.core.clock import time_forwards, timed_hook
from massmech.core.rope import RopeSpec, rope_spec_from_tables
from massmech.core.sites import RAW, SITES, STAGES, table_hooks, to_heads
from massmech.errors import ConfigError, HookError, IndexRangeError, InputTypeError, RopeError

#: The end-of-forward hook: fires after every attention hook, on every architecture.
END_HOOK = "ln_final.hook_in"


def pad_batch(
    seqs: Sequence[Sequence[int]], pad_id: int = 0, *, left: bool = False
) -> tuple[Int[Tensor, "batch width"], Bool[Tensor, "batch width"]]:
    """Token lists as one padded batch: ids and a mask of the real tokens.

    Right padding (default) keeps every sequence at positions ``0..len-1``; ``left=True`` pads on
    the left, for generation.

    >>> ids, mask = pad_batch([[5, 6, 7], [8]], pad_id=0)
    >>> ids.tolist(), mask.tolist()
    ([[5, 6, 7], [8, 0, 0]], [[True, True, True], [True, False, False]])
    >>> pad_batch([[5, 6, 7], [8]], pad_id=1, left=True)[0].tolist()
    [[5, 6, 7], [1, 1, 8]]
    """
    width = max(map(len, seqs))
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.bool)
    for row, seq in enumerate(seqs):
        cols = slice(width - len(seq), width) if left else slice(0, len(seq))
        ids[row, cols] = torch.tensor(list(seq), dtype=torch.long)
        mask[row, cols] = True
    return ids, mask


@dataclass(frozen=True)
class ModelInfo:
    """Metadata of a loaded model (serialisable with ``dataclasses.asdict``).

    >>> import massmech as mm
    >>> mm.load_model("tiny-gpt2").info
    ModelInfo(name='tiny-gpt2', source='random init (seed 0)', architecture='GPT2LMHeadModel', n_layers=2, n_heads=4, n_kv_heads=4, d_head=16, n_ctx=512, has_rope=False, qk_norm=False, dtype='float32', device='cpu')
    """

    name: str
    source: str
    architecture: str
    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_head: int
    n_ctx: int
    has_rope: bool
    qk_norm: bool
    dtype: str
    device: str


class LoadedModel:
    """A model ready for capture: bridge + tokenizer + RoPE spec + metadata.

    Build one with :func:`load_model` or :func:`wrap`.

    >>> import massmech as mm
    >>> model = mm.load_model("tiny-llama")
    >>> model.has_rope, model.rope_or_none is model.rope, model.stages("q"), model.stages("v")
    (True, True, ('pre', 'post'), ('pre',))
    >>> model.hook_name("k", "post", 1)
    ('blocks.1.attn.hook_rot_k', False)
    >>> ids = model.tokenize("hi")  # the byte tokenizer: BOS, h, i
    >>> ids, model.probe_tokens(4).tolist()
    ([[257, 71, 72]], [[11, 190, 111, 32]])
    >>> acts = model.run_sites(torch.tensor(ids), [("q", "pre"), ("k", "post")], layers=[0])
    >>> {key: tuple(x.shape) for key, x in acts.items()}  # [batch, pos, head, d_head]
    {('q', 'pre', 0): (1, 3, 4, 16), ('k', 'post', 0): (1, 3, 2, 16)}
    >>> raw = model.run_hooks(torch.tensor(ids), {"v0": "blocks.0.attn.hook_v"})
    >>> tuple(raw["v0"].shape), model.info_dict()["rope"]["layout"]
    ((1, 3, 2, 16), 'half')
    """

    def __init__(
        self, bridge: Any, tokenizer: Any, name: str, source: str, *, spec: str | None = None,
        load_kwargs: dict | None = None,
    ) -> None:
        self.bridge = bridge
        self.tokenizer = tokenizer
        self.spec = spec  # what load_model was given (None for wrapped models): doctor reloads it
        self.load_kwargs = load_kwargs or {}
        time_forwards(_bridge.hf_model(bridge))  # its passes count in massmech.core.clock.FORWARDS
        cfg = bridge.cfg
        has_rope = getattr(cfg, "positional_embedding_type", "") == "rotary"
        n_layers = int(cfg.n_layers)
        # One probe forward tells which hooks really fire (some bridges register hooks that
        # never do, e.g. hook_rot_q on GPT-NeoX) and yields the cos/sin tables RoPE is read from.
        candidates = [f"blocks.0.attn.hook_{s}" for s in ("q_normed", "rot_q", "rot_k")] + [
            table_hooks(li)[t] for t in (0, 1) for li in range(n_layers)]
        wanted = {hook: hook for hook in candidates if hook in bridge.hook_dict}
        n_ctx = int(cfg.n_ctx)
        fired = self.run_hooks(self.probe_tokens(min(64, n_ctx)), wanted, require_all=False, until=END_HOOK)
        self._qk_norm = "blocks.0.attn.hook_q_normed" in fired
        self._has_post = {s: f"blocks.0.attn.hook_rot_{s}" in fired for s in ("q", "k")}
        self._rope: RopeSpec | None = None
        self._rope_problem = f"{name} has no rotary position embedding (it is not a RoPE model)"
        if has_rope:
            tables = [fired.get(table_hooks(li)[t]) for t in (0, 1) for li in range(n_layers)]
            if any(t is None for t in tables):
                self._rope_problem = (
                    f"{name} uses RoPE but its TransformerLens bridge exposes no firing "
                    "hook_cos/hook_sin, so its frequencies cannot be read"
                )
            else:
                # hook_cos is [batch or 1, pos, rotary_dim]; positions 0..n-1 of one sequence.
                cos = torch.stack([t[0] for t in tables[:n_layers]]).cpu()
                sin = torch.stack([t[0] for t in tables[n_layers:]]).cpu()
                if not sin.any() and bool((cos == cos[:, :1, :1]).all()):
                    # The rotary module rotates by angle 0 everywhere (e.g. the NoPE and
                    # absolute-position twins of massmech.core.twin): there is no RoPE.
                    has_rope = False
                    self._rope_problem = f"{name}'s rotary tables are the identity (no rotation at any position)"
                else:
                    self._rope = rope_spec_from_tables(cos, sin, int(cfg.d_head))
        param = next(bridge.parameters())
        self.info = ModelInfo(
            name=name, source=source, architecture=str(getattr(cfg, "architecture", None) or type(bridge).__name__),
            n_layers=n_layers, n_heads=int(cfg.n_heads), n_kv_heads=int(getattr(cfg, "n_key_value_heads", None) or cfg.n_heads),
            d_head=int(cfg.d_head), n_ctx=n_ctx, has_rope=has_rope, qk_norm=self._qk_norm,
            dtype=str(param.dtype).removeprefix("torch."), device=str(param.device),
        )

    # ----------------------------------------------------------------- RoPE
    @property
    def has_rope(self) -> bool:
        return self.info.has_rope

    @property
    def rope(self) -> RopeSpec:
        """The model's true RoPE spec; raises :class:`~massmech.core.rope.RopeError` if it has none."""
        if self._rope is None:
            raise RopeError(
                f"{self._rope_problem}: RoPE pairs, frequencies and bands are undefined. "
                "Per-dim statistics (capture_stats, detect_massive) still work."
            )
        return self._rope

    @property
    def rope_or_none(self) -> RopeSpec | None:
        """The RoPE spec, or ``None`` where there is none."""
        return self._rope

    # ---------------------------------------------------------------- sites
    def stages(self, site: str) -> tuple[str, ...]:
        """Stages this model has for a site (``"v"`` has only ``"pre"``; Q and K of a QK-norm model
        also ``"raw"``, before the norm: :mod:`massmech.core.sites`)."""
        if site not in SITES:
            raise ConfigError(f"unknown site {site!r}; sites are {SITES}")
        if site == "v":
            return ("pre",)
        stages = STAGES if self._has_post[site] else ("pre",)
        return (RAW, *stages) if self._qk_norm else stages

    def hook_name(self, site: str, stage: str, layer: int) -> tuple[str, bool]:
        """TransformerLens hook for ``(site, stage, layer)`` and whether it is heads-first.

        Returns:
            ``(name, heads_first)``; ``heads_first`` means layout ``[b, head, pos, d]``.
        """
        if stage not in self.stages(site):
            raise ConfigError(
                f"{self.info.name} has no stage {stage!r} for site {site!r}; it has {self.stages(site)}"
                + (" (V is not rotated)" if site == "v" else "")
            )
        if not 0 <= layer < self.info.n_layers:
            raise IndexRangeError(f"layer {layer} out of range: {self.info.name} has {self.info.n_layers}")
        if stage == "post":
            return f"blocks.{layer}.attn.hook_rot_{site}", False
        if stage == RAW:
            return f"blocks.{layer}.attn.hook_{site}", False
        if site != "v" and self._qk_norm:
            return f"blocks.{layer}.attn.hook_{site}_normed", True
        return f"blocks.{layer}.attn.hook_{site}", False

    # --------------------------------------------------------------- tokens
    def tokenize(self, texts: str | Sequence[str]) -> list[list[int]]:
        """Token ids per text, with the tokenizer's own special tokens (as plain HF would)."""
        if isinstance(texts, str):
            texts = [texts]
        return [list(ids) for ids in self.tokenizer(list(texts), add_special_tokens=True).input_ids]

    def probe_tokens(self, n: int) -> Int[Tensor, "1 n"]:
        """``n`` fixed, content-free token ids ``[1, n]`` for structural probes."""
        vocab = int(self.bridge.cfg.d_vocab)
        ids = (torch.arange(n) * 7919 + 11) % max(vocab - 1, 1)
        return ids[None].to(self.device)

    # -------------------------------------------------------------- forward
    @property
    def device(self) -> torch.device:
        """Where the model's weights are (the first parameter's device).

        >>> import massmech as mm
        >>> mm.load_model("tiny-llama").device
        device(type='cpu')
        """
        return next(self.bridge.parameters()).device

    @property
    def pad_id(self) -> int:
        """The id padding uses: the tokenizer's pad token, else its EOS, else 0 (always masked).

        >>> import massmech as mm
        >>> mm.load_model("tiny-llama").pad_id  # the byte tokenizer's pad token
        256
        """
        tok = self.tokenizer
        return next((int(t) for t in (tok.pad_token_id, tok.eos_token_id) if t is not None), 0)

    end_hook = END_HOOK

    def named_weights(self) -> Iterator[tuple[str, Tensor]]:
        """The Hugging Face model's parameters by name, as the bridge holds them (wrapper levels
        included; :func:`~massmech.core.bridge.clean_name` removes them): what a weight fingerprint reads.

        >>> import massmech as mm
        >>> from massmech.core.bridge import clean_name
        >>> clean_name(next(iter(mm.load_model("tiny-llama").named_weights()))[0])
        'model.embed_tokens.weight'
        """
        return _bridge.hf_model(self.bridge).named_parameters()

    @contextlib.contextmanager
    def hooks(self, fwd_hooks: Sequence[tuple[str, Any]]) -> Iterator[LoadedModel]:
        """Context in which every forward pass of the model carries ``(hook name, fn)`` hooks.

        >>> import massmech as mm, torch
        >>> model, seen = mm.load_model("tiny-llama"), []
        >>> with model.hooks([("blocks.0.attn.hook_k", lambda x, hook: seen.append(tuple(x.shape)))]):
        ...     model.forward(torch.tensor([[5, 6, 7]]))
        >>> seen
        [(1, 3, 2, 16)]
        """
        with self.bridge.hooks(fwd_hooks=[(name, timed_hook(fn)) for name, fn in fwd_hooks]):  # their seconds counted
            yield self

    def logits(self, ids: Int[Tensor, "batch pos"], attention_mask: Tensor | None = None) -> Float[Tensor, "batch pos vocab"]:
        """One forward pass; logits in the model's dtype.

        >>> import massmech as mm, torch
        >>> mm.load_model("tiny-llama").logits(torch.tensor([[5, 6, 7]])).shape
        torch.Size([1, 3, 259])
        """
        return self.bridge(ids, attention_mask=attention_mask, return_type="logits")

    def forward(self, ids: Int[Tensor, "batch pos"], attention_mask: Tensor | None = None, *, until: str | None = None) -> None:
        """One forward pass for its hooks only (no logits); ``until``: end it where that hook fires.

        >>> import massmech as mm, torch
        >>> mm.load_model("tiny-llama").forward(torch.tensor([[5, 6, 7]]), until=END_HOOK) is None
        True
        """
        _bridge.forward_until(self.bridge, ids, attention_mask, until=until)

    def final_logits(self, ids: Int[Tensor, "batch pos"], attention_mask: Tensor, rows: Int[Tensor, " n"],
                     cols: Int[Tensor, " n"]) -> Float[Tensor, "n vocab"]:
        """Logits (fp32, the model's softcap applied) at ``(rows[i], cols[i])`` only; see
        :func:`massmech.core.bridge.final_logits`.

        >>> import massmech as mm, torch
        >>> ids = torch.tensor([[5, 6, 7], [8, 9, 9]])
        >>> mm.load_model("tiny-llama").final_logits(ids, torch.ones_like(ids), torch.tensor([0, 1]),
        ...                                           torch.tensor([2, 0])).shape
        torch.Size([2, 259])
        """
        return _bridge.final_logits(self.bridge, ids, attention_mask, rows, cols)

    def generate(self, ids: Int[Tensor, "batch pos"], attention_mask: Tensor, max_new_tokens: int, *,
                 stop: bool = True) -> Int[Tensor, "batch new"]:
        """Greedy continuations of left-padded ``ids`` (hooks fire on every step); ``stop``: a row
        ends at its first EOS or end-of-turn token (:func:`massmech.core.bridge.stop_ids`), padded after.

        >>> import massmech as mm
        >>> model = mm.load_model("tiny-llama")
        >>> ids, mask = pad_batch([[5, 6, 7], [8]], model.pad_id, left=True)
        >>> model.generate(ids, mask, 4).shape
        torch.Size([2, 4])
        """
        return _bridge.greedy_generate(self.bridge, ids, attention_mask, max_new_tokens=max_new_tokens, pad_id=self.pad_id,
                                       stop_ids=_bridge.stop_ids(self.bridge, self.tokenizer) if stop else ())

    def run_hooks(
        self,
        tokens: Int[Tensor, "batch pos"],
        hooks: dict[Any, str],
        attention_mask: Int[Tensor, "batch pos"] | None = None,
        *,
        require_all: bool = True, until: str | None = None,
    ) -> dict[Any, Tensor]:
        """One forward pass that returns copies of the named hook activations.

        Args:
            tokens: Token ids.
            hooks: ``key -> hook name``.
            attention_mask: 1 for real tokens, 0 for padding.
            require_all: Every hook must fire (default); else return those that did.
            until: End the pass where this hook fires (:func:`~massmech.core.bridge.forward_until`).

        Raises:
            RuntimeError: A required hook did not fire (names it).
        """
        out: dict[Any, Tensor] = {}

        def make(key: Any):
            def fn(x: Tensor, hook: Any) -> None:
                out[key] = x.detach().clone()

            return fn

        fwd = [(name, make(key)) for key, name in hooks.items()]
        with torch.inference_mode(), self.hooks(fwd):
            _bridge.forward_until(self.bridge, tokens, attention_mask, until=until)
        missing = [name for key, name in hooks.items() if key not in out]
        if missing and require_all:
            raise HookError(f"hooks did not fire on {self.info.name}: {missing[:8]}")
        return out

    def run_sites(
        self,
        tokens: Int[Tensor, "batch pos"],
        keys: Iterable[tuple[str, str]],
        layers: Iterable[int] | None = None,
        attention_mask: Int[Tensor, "batch pos"] | None = None,
    ) -> dict[tuple[str, str, int], Float[Tensor, "batch pos head d_head"]]:
        """Activations of ``(site, stage)`` pairs at every layer, as fp32 CPU ``[batch, pos, head, d_head]``.

        For small inputs (checks, tests, figures); use :func:`massmech.capture_stats` for corpora.
        """
        layers = range(self.info.n_layers) if layers is None else list(layers)
        names = {}
        heads_first = {}
        for site, stage in keys:
            for layer in layers:
                names[(site, stage, layer)], heads_first[(site, stage, layer)] = self.hook_name(
                    site, stage, layer
                )
        mask = None if attention_mask is None else attention_mask.to(self.device)
        acts = self.run_hooks(tokens.to(self.device), names, mask, until=END_HOOK)  # no unembedding
        heads = {"q": self.info.n_heads, "k": self.info.n_kv_heads, "v": self.info.n_kv_heads}
        return {k: to_heads(v, heads_first[k], heads[k[0]]).float().cpu() for k, v in acts.items()}

    def __repr__(self) -> str:
        i = self.info
        return (
            f"LoadedModel({i.name!r}, {i.architecture}, layers={i.n_layers}, heads={i.n_heads}/"
            f"{i.n_kv_heads}, d_head={i.d_head}, rope={'yes' if self._rope else 'no'})"
        )

    def info_dict(self) -> dict:
        d = asdict(self.info)
        d["rope"] = self._rope.to_dict() if self._rope else None
        return d


def check_vocab(model: Any, tokenizer: Any) -> None:
    """Refuse a tokenizer whose token ids reach past the model's embedding table (capture would
    fail later with an ``IndexError``).

    Raises:
        ConfigError: The tokenizer has more tokens than the model embeds.

    >>> from massmech.core.tiny import tiny_model
    >>> hf, tok = tiny_model("tiny-llama", seed=0)
    >>> check_vocab(hf, tok) is None  # the model's own tokenizer fits
    True
    """
    n_embed = int(model.get_input_embeddings().weight.shape[0])
    n_tok = len(tokenizer)
    if n_tok > n_embed:
        raise ConfigError(f"the tokenizer has {n_tok} tokens but the model embeds only {n_embed} "
                          f"(vocab_size={getattr(model.config, 'vocab_size', '?')}): pass the model's own tokenizer")


def wrap(model: Any, tokenizer: Any = None, *, name: str | None = None) -> LoadedModel:
    """Wrap an already-built model.

    **A Hugging Face model is modified in place**: it is put in eval mode, its config gains
    ``architectures`` if missing, and the TransformerLens bridge wraps its modules (the bridge
    keeps it as its wrapped original model). Pass ``copy.deepcopy(hf_model)`` to keep the
    original untouched. A tokenizer built in memory (no folder to re-open it from) works: an
    equal copy is saved to a temporary folder for the bridge.

    Args:
        model: A TransformerLens ``TransformerBridge``, or a Hugging Face causal LM (booted into
            a bridge here, with no hub call).
        tokenizer: Required for a Hugging Face model; a bridge brings its own.
        name: Display name (defaults to the model's own).

    Returns:
        A :class:`LoadedModel`.

    >>> from massmech.core.loading import load_hf
    >>> hf, tok, _, _ = load_hf("tiny-llama")
    >>> wrap(hf, tok, name="mine")
    LoadedModel('mine', LlamaForCausalLM, layers=2, heads=4/2, d_head=16, rope=yes)
    """
    kv_cache_compat()
    if is_bridge(model):
        nm = name or str(getattr(model.cfg, "model_name", "bridge"))
        return LoadedModel(model, tokenizer or model.tokenizer, nm, "wrapped bridge")
    if type(model).__name__ == "HookedTransformer":
        raise InputTypeError(
            "massmech needs a TransformerBridge (TransformerLens 4.x removed HookedTransformer): "
            "boot one with TransformerBridge.boot_transformers(name, hf_model=..., tokenizer=...) "
            "or pass the Hugging Face model to massmech.wrap(hf_model, tokenizer)"
        )
    try:
        from transformers import PreTrainedModel
    except ImportError:  # pragma: no cover
        PreTrainedModel = ()  # type: ignore[assignment]
    if isinstance(model, PreTrainedModel):
        if tokenizer is None:
            raise ConfigError("wrap(hf_model) needs the tokenizer: wrap(hf_model, tokenizer)")
        nm = name or str(getattr(model.config, "_name_or_path", "") or type(model).__name__)
        check_vocab(model, tokenizer)
        return LoadedModel(boot(model, tokenizer, nm), tokenizer, nm, "wrapped HF model")
    raise InputTypeError(
        f"cannot wrap a {type(model).__name__}: pass a TransformerBridge or a Hugging Face "
        "PreTrainedModel (with its tokenizer)"
    )
