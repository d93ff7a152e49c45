"""One resumable cell store for every study.

A *cell* is the smallest unit of a study that is worth keeping: one (model, task, condition) of
an ablation sweep, one quantized variant, one twin checkpoint's analysis. Its **key** hashes

* the study's name and its **schema version** (its :class:`~massmech.studies.registry.StudySpec`'s ``version``),
* the cell's config parts (model, task config, condition, ...), and
* a hash of its data (the examples themselves, the checkpoint's weights, ...),

so a cell computed by older code, on other data or with another config is never found again:
it is recomputed, never reused. Changing what a study's measure computes means bumping its
version where the study registers itself (``tests/infra/test_cells.py`` pins each measure's output
together with its version so the bump cannot be forgotten).

Each cell is a folder ``STORE/<study>/<key>/`` holding ``cell.json`` (provenance: massmech
version, git hash, package versions, time, study, version, key parts, and a small JSON payload)
and any tables as parquet. It is built under a temporary name and renamed into place, so a killed
run leaves only whole cells (and temp folders that :meth:`CellStore.gc` removes).

>>> import tempfile, pandas as pd
>>> store = CellStore(tempfile.mkdtemp() + "/cells", "ablation", version=4)
>>> key = store.key({"model": "tiny-llama", "task": "kv_lookup"})
>>> key in store
False
>>> _ = store.put(key, {"model": "tiny-llama", "task": "kv_lookup"}, data={"accuracy": 0.5},
...               tables={"rows": pd.DataFrame({"uid": [1, 2], "correct": [True, False]})})
>>> cell = store.get(key)
>>> cell.data["accuracy"], len(cell.tables["rows"]), cell.meta["version"]
(0.5, 2, 4)
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from massmech.errors import StoreError
from massmech.files.io import canonical, jsonable, write_json

CELL_FILE = "cell.json"
_TMP = ".tmp-"


@dataclasses.dataclass(frozen=True)
class Cell:
    """A stored cell: its key, provenance (``meta``), JSON payload and tables."""

    key: str
    meta: dict
    data: Any
    tables: dict
    folder: Path | None = None  # where the cell's files are (:meth:`CellStore.put` ``files=``)

    def file(self, name: str) -> Path:
        """Path of a file stored with the cell."""
        if self.folder is None or name not in self.meta.get("files", []):
            raise StoreError(f"cell {self.key} holds no file {name!r}; it holds {self.meta.get('files', [])}")
        return self.folder / name

    def __repr__(self) -> str:
        return f"Cell({self.meta.get('study')}/{self.key}, v{self.meta.get('version')}, tables={sorted(self.tables)})"


def cell_key(study: str, parts: dict, *, version: int) -> str:
    """The key of a cell of ``study`` at schema ``version``: a hash of both and the cell's parts.

    >>> cell_key("ablation", {"n": 5}, version=4) == cell_key("ablation", {"n": 5.0}, version=4)
    True
    """
    blob = canonical({"study": study, "version": int(version), "parts": parts})
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def data_hash(obj: Any) -> str:
    """A stable hash of a cell's data (examples, token windows, ...) for its key parts."""
    return hashlib.sha256(canonical(obj).encode()).hexdigest()[:20]


class CellStore:
    """The cells of one study in one folder (``root/<study>/``); see the module docstring.

    Args:
        root: The store folder. Studies may share one (``--cells DIR``); each has its own subfolder.
        study: The study's name.
        version: The study's schema version: cells of another version are neither found nor reused.
    """

    def __init__(self, root: str | os.PathLike, study: str, *, version: int) -> None:
        if not study or "/" in study:
            raise StoreError(f"bad study name {study!r} for a cell store")
        self.root = Path(root)
        self.study = study
        self.version = int(version)
        self.folder = self.root / study

    def __repr__(self) -> str:
        return f"CellStore({str(self.root)!r}, study={self.study!r}, version={self.version})"

    def key(self, parts: dict) -> str:
        """The key of a cell: hash of study, schema version and its parts."""
        return cell_key(self.study, parts, version=self.version)

    def _current(self, meta: dict | None) -> bool:
        return meta is not None and meta.get("version") == self.version and meta.get("study") == self.study

    def __contains__(self, key: str) -> bool:
        return self._current(_read_meta(self.folder / key))

    def get(self, key: str) -> Cell | None:
        """The cell, or ``None`` if absent or written under another schema version."""
        folder = self.folder / key
        meta = _read_meta(folder)
        if not self._current(meta):
            return None
        import pandas as pd

        tables = {name: pd.read_parquet(folder / f"{name}.parquet") for name in meta.get("tables", [])}
        return Cell(key, meta, meta.get("data"), tables, folder)

    def put(self, key: str, parts: dict, *, data: Any = None, tables: dict | None = None,
            files: dict[str, Callable[[Path], object]] | None = None, timing: dict | None = None) -> Path:
        """Write a cell atomically (a temp folder renamed into place) with its provenance.

        Args:
            data: A JSON payload. tables: name -> DataFrame (stored as parquet).
            files: file name -> a function writing that file at the path it is given.
            timing: How long it took (``group``, ``cell_seconds``, ``load_seconds``), read back by
                :meth:`timings`; provenance, not part of the key.
        """
        if key != self.key(parts):
            raise StoreError(f"key {key} does not match its parts for study {self.study!r} v{self.version}")
        tables = tables or {}
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.folder / f"{_TMP}{key}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            for name, table in tables.items():
                table.to_parquet(tmp / f"{name}.parquet", index=False)
            for name, write in (files or {}).items():
                if "/" in name or name in (CELL_FILE,) or name.endswith(".parquet"):
                    raise StoreError(f"bad cell file name {name!r}")
                write(tmp / name)
            meta = {
                "massmech_cell": 1, "study": self.study, "version": self.version, "key": key, "parts": parts,
                "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                **_provenance(),
                "tables": sorted(tables), "files": sorted(files or {}), "data": data,
                **({"timing": timing} if timing else {}),
            }
            write_json(tmp / CELL_FILE, json.loads(json.dumps(meta, default=jsonable)))  # payload as given
            final = self.folder / key
            try:
                os.replace(tmp, final)  # atomic; fails if another writer's cell is already in place
            except OSError as err:
                if key not in self:  # not a whole cell of ours there: never replace what is there
                    raise StoreError(f"cannot store cell {key} at {final}: {err}") from err
                shutil.rmtree(tmp, ignore_errors=True)  # the same cell, written meanwhile: keep that one
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return final

    def timings(self) -> dict[str, dict[str, float]]:
        """Per group (model) of the current-version cells: the median ``cell_seconds`` and
        ``load_seconds`` recorded when they were computed (what a scheduler plans a rerun with).

        >>> import tempfile
        >>> store = CellStore(tempfile.mkdtemp(), "ablation", version=4)
        >>> parts = {"model": "m", "task": "t"}
        >>> _ = store.put(store.key(parts), parts, timing={"group": "m", "cell_seconds": 2.0, "load_seconds": 0.5})
        >>> store.timings()
        {'m': {'cell_seconds': 2.0, 'load_seconds': 0.5}}
        """
        import statistics

        seen: dict[str, dict[str, list[float]]] = {}
        for _, meta in _cells(self.folder):
            t = meta.get("timing") if meta.get("version") == self.version else None
            if isinstance(t, dict) and t.get("group") is not None:
                for name in ("cell_seconds", "load_seconds"):
                    if isinstance(t.get(name), int | float):
                        seen.setdefault(t["group"], {}).setdefault(name, []).append(float(t[name]))
        return {g: {name: statistics.median(v) for name, v in d.items()} for g, d in seen.items()}

    def keys(self) -> list[str]:
        """Keys of the current-version cells in the store."""
        return sorted(k for k, meta in _cells(self.folder) if meta.get("version") == self.version)


@functools.lru_cache(maxsize=1)
def _provenance() -> dict:
    """massmech version, git hash and package versions: read once per process, not once per cell
    (``git`` is a subprocess)."""
    from massmech.files.provenance import git_hash, versions

    packages = versions()
    return {"massmech": packages.get("massmech"), "git": git_hash(), "packages": packages}


def _read_meta(folder: Path) -> dict | None:
    try:
        meta = json.loads((folder / CELL_FILE).read_text())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) and meta.get("massmech_cell") == 1 else None


def _cells(folder: Path) -> Iterator[tuple[str, dict]]:
    if not folder.is_dir():
        return
    for sub in sorted(folder.iterdir()):
        meta = _read_meta(sub) if sub.is_dir() and not sub.name.startswith(_TMP) else None
        if meta is not None:
            yield sub.name, meta


def list_cells(root: str | os.PathLike, versions: dict[str, int]):
    """One row per cell in a store: study, key, version, current (``versions[study]``, the schema
    this massmech writes), created, massmech, git. Studies not in ``versions`` are listed too.

    >>> import tempfile
    >>> list_cells(tempfile.mkdtemp(), {"ablation": 4}).empty
    True
    """
    import pandas as pd

    rows = []
    root = Path(root)
    found = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    for study in found:
        for key, meta in _cells(root / study):
            rows.append({"study": study, "key": key, "version": meta.get("version"),
                         "current": meta.get("version") == versions.get(study), "created": meta.get("created"),
                         "massmech": meta.get("massmech"), "git": meta.get("git"),
                         "tables": ",".join(meta.get("tables", []))})
    return pd.DataFrame(rows, columns=["study", "key", "version", "current", "created", "massmech", "git", "tables"])


def _writer_alive(tmp_name: str) -> bool:
    """Whether the process that is writing a ``.tmp-<key>-<pid>-<rand>`` folder still runs here."""
    try:
        pid = int(tmp_name.split("-")[-2])
        os.kill(pid, 0)
    except (ValueError, IndexError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


def gc(root: str | os.PathLike, versions: dict[str, int], *, dry_run: bool = False) -> list[Path]:
    """Remove stale cells (older than ``versions[study]``) and leftovers of killed writers; returns what went.

    Only folders massmech wrote are touched: a cell folder with a massmech ``cell.json`` of an
    *older* version (cells of a newer massmech sharing the store stay), or a ``.tmp-`` folder whose
    writing process is gone (a run writing now keeps its cells in flight). Links are never followed.
    """
    root = Path(root)
    gone = []
    for study, current in versions.items():
        folder = root / study
        if not folder.is_dir():
            continue
        for sub in sorted(folder.iterdir()):
            if sub.is_symlink() or not sub.is_dir():
                continue
            if sub.name.startswith(_TMP):
                stale = not _writer_alive(sub.name)
            else:
                meta = _read_meta(sub)
                stale = meta is not None and isinstance(meta.get("version"), int) and meta["version"] < current
            if stale:
                gone.append(sub)
                if not dry_run:
                    shutil.rmtree(sub)
    return gone
