"""Run folders: written whole or not at all, each with a manifest.

A run is built in a temporary sibling folder and moved into place only when complete, so a
crash or bad input never leaves a half-written result folder.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import importlib.metadata
import json
import os
import platform
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

_PACKAGES = ("massmech", "torch", "transformers", "transformer-lens", "numpy", "pandas", "gguf")


class RunDirError(OSError):
    """The output folder cannot be written."""


def git_hash() -> str | None:
    """Commit of the massmech source tree, or ``None`` outside a git checkout."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() or None


def versions() -> dict[str, str | None]:
    """Installed versions of the packages a result depends on."""
    out: dict[str, str | None] = {}
    for name in _PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def manifest(config: Any, *, model_info: dict | None = None, seed: int | None = None) -> dict:
    """Manifest of a run: config, model, seed, package versions, git hash, platform, time."""
    cfg = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config)
    return {
        "config": cfg,
        "model": model_info,
        "seed": seed,
        "versions": versions(),
        "git_hash": git_hash(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }


def write_json(path: Path, obj: Any) -> None:
    """Write JSON atomically."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def check_writable(out: str | os.PathLike) -> Path:
    """Fail early, with a clear message, if ``out`` cannot be created; creates nothing."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise RunDirError(f"{out} exists and is not a folder")
    parent = out.absolute().parent
    while not parent.exists():  # nearest existing ancestor
        parent = parent.parent
    if not parent.is_dir():
        raise RunDirError(f"cannot create the output folder {out}: {parent} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise RunDirError(f"cannot create the output folder {out}: {parent} is not writable")
    return out


@contextlib.contextmanager
def atomic_run_dir(out: str | os.PathLike, *, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary folder that replaces ``out`` only if the block finishes.

    Args:
        out: Final folder.
        overwrite: Replace an existing ``out`` (default); else raise if it exists.
    """
    out = check_writable(out)
    if out.exists() and not overwrite:
        raise RunDirError(f"{out} exists; pass overwrite or choose another folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
