"""Files massmech writes, and the one way it writes them: atomically (temp file + rename)."""

from __future__ import annotations

import dataclasses
import json
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"


def atomic_write(path: str | os.PathLike, write: Callable[[Path], object]) -> Path:
    """Write a file atomically: ``write(tmp)`` to a unique temp sibling, then rename it into place.

    The temp name holds the pid and a random part, so concurrent writers never collide; a
    failed write leaves no temp file behind.

    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "x.txt"
    >>> atomic_write(p, lambda tmp: tmp.write_text("hi")).read_text()
    'hi'
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write JSON atomically (see :func:`atomic_write`)."""
    text = json.dumps(obj, indent=2, default=str) + "\n"
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def sha256_file(path: str | os.PathLike, h: Any = None) -> str:
    """sha256 of a file's bytes, read in 1 MiB chunks (``h``: update this hash object instead)."""
    import hashlib

    digest = h if h is not None else hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def canonical(obj: Any) -> str:
    """Canonical JSON (sorted keys, no spaces) of a key part: tuples and lists hash alike, and a
    whole float like an int (``lam=5`` and ``lam=5.0`` are one cell).

    >>> canonical({"b": (1, 2.0), "a": 5.0}) == canonical({"a": 5, "b": [1, 2]})
    True
    """
    return json.dumps(_whole(json.loads(json.dumps(obj, default=jsonable))), sort_keys=True, separators=(",", ":"))


def _whole(x: Any) -> Any:
    if isinstance(x, float) and x.is_integer():
        return int(x)
    if isinstance(x, list):
        return [_whole(v) for v in x]
    if isinstance(x, dict):
        return {k: _whole(v) for k, v in x.items()}
    return x


def jsonable(x: Any) -> Any:
    """JSON for what ``json`` cannot encode: dataclasses, sets, paths, numpy/torch scalars."""
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return dataclasses.asdict(x)
    if isinstance(x, (set, frozenset)):
        return sorted(x)
    if isinstance(x, Path):
        return str(x)
    if hasattr(x, "item"):  # numpy / torch scalars
        return x.item()
    raise TypeError(f"{type(x).__name__} cannot be part of a cell key")
