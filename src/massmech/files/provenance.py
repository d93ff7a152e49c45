"""Where a result came from: the package versions, the whole environment, the git commit, the
platform and the time, as a run's manifest records them (:func:`manifest`)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import importlib.metadata
import platform
import subprocess
from pathlib import Path
from typing import Any

_PACKAGES = ("massmech", "torch", "transformers", "transformer-lens", "numpy", "pandas", "gguf")


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


@functools.lru_cache(maxsize=1)
def environment() -> dict[str, str]:
    """Every installed distribution and its version, as pip resolved them (``name -> version``).

    A run's manifest records all of them, so a result can be traced to the exact environment
    (compare with ``constraints.txt``, the versions ``make setup`` installs).

    >>> env = environment()
    >>> "torch" in env and env["massmech"] == versions()["massmech"]
    True
    """
    found = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            found[name.lower().replace("_", "-")] = dist.version
    return dict(sorted(found.items()))


def manifest(config: Any, *, model_info: dict | None = None, seed: int | None = None) -> dict:
    """Manifest of a run: config, model, seed, package versions (the main ones, and every installed
    distribution under ``environment``), git hash, platform, time."""
    cfg = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config)
    return {
        "config": cfg,
        "model": model_info,
        "seed": seed,
        "versions": versions(),
        "environment": environment(),
        "git_hash": git_hash(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
