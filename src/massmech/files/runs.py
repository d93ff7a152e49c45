"""Run folders: written whole or not at all, each with a manifest, never over a user's files.

A run is built in a temporary sibling folder and moved into place only when complete, so a
crash or bad input never leaves a half-written result folder. Every file is written through
:func:`atomic_write` (temp sibling, then rename).

Safety rules for an output folder ``out`` (:func:`check_out`, checked before any compute):

* ``out`` may be new or an empty folder;
* an existing folder is only ever replaced (``overwrite``) or continued (``resume``) if its
  ``manifest.json`` says it is a massmech run of the same kind, and a replaced run may hold
  nothing but the files massmech listed in that manifest: a user's own files are never
  deleted, whatever the flags;
* writability is tested by creating and removing a probe entry (``os.access`` says yes to root
  on read-only file systems such as ``/sys``)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from massmech.errors import RunDirError
from massmech.files.io import MANIFEST, canonical, write_json
from massmech.files.provenance import git_hash, versions


def _nearest_dir(path: Path) -> Path:
    """``path`` itself if it exists, else its nearest existing ancestor."""
    path = path.absolute()
    while not path.exists():
        path = path.parent
    return path


def _probe(folder: Path, out: Path) -> None:
    """Create and remove an entry in ``folder``: the only reliable writability test (root, /sys)."""
    if not folder.is_dir():
        raise RunDirError(f"cannot create the output folder {out}: {folder} is not a folder")
    probe = folder / f".massmech-probe-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        probe.mkdir()
        probe.rmdir()
    except OSError as err:
        raise RunDirError(
            f"cannot create the output folder {out}: {folder} is not writable "
            f"({err.strerror or err}); choose another --out"
        ) from None


def _entries(folder: Path) -> list[str]:
    """Every entry under ``folder`` (relative, sorted), tolerating entries that vanish meanwhile.

    Other massmech processes may be writing into the same run (parallel workers create and
    remove probe entries and ``.tmp`` cell folders), so an entry gone between listing and
    descending is skipped rather than an error.
    """
    found = []
    for root, dirs, files in os.walk(folder, followlinks=False):  # os.walk ignores vanished folders
        rel = Path(root).relative_to(folder)
        found.extend(str(rel / name) for name in dirs + files)
    return sorted(found)


def read_manifest(folder: str | os.PathLike) -> dict | None:
    """The massmech manifest of a run folder, or ``None`` if it has none (or not a readable one)."""
    path = Path(folder) / MANIFEST
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and "run_kind" in data else None


Kind = str | tuple[str, ...]  # a run kind, or a kind and its older names (the first is written)


def _kinds(kind: Kind) -> tuple[str, ...]:
    return (kind,) if isinstance(kind, str) else tuple(kind)


def _check_existing(out: Path, kind: Kind, *, overwrite: bool, resume: bool) -> None:
    """Refuse an existing ``out`` unless it is a previous massmech run of ``kind`` (see module doc)."""
    if not out.exists():
        return
    if not out.is_dir():
        raise RunDirError(f"{out} exists and is not a folder; choose another --out")
    entries = _entries(out)  # a user file in a subfolder counts too
    if not entries:
        return  # an empty folder: nothing to lose
    found = read_manifest(out)
    if found is None:
        raise RunDirError(
            f"{out} exists and is not a massmech run folder (no massmech {MANIFEST}); massmech "
            "never replaces or writes into folders it did not create: choose a new --out"
        )
    if found["run_kind"] not in _kinds(kind):
        raise RunDirError(
            f"{out} holds a massmech {found['run_kind']!r} run, not a {_kinds(kind)[0]!r} run; choose another --out"
        )
    kind = _kinds(kind)[0]
    if resume:
        return
    if not overwrite:
        raise RunDirError(f"{out} holds a previous massmech {kind} run; pass --overwrite (overwrite=True) to replace it")
    ours = set(found.get("files") or ())
    foreign = [e for e in entries if e not in ours]
    if foreign:
        raise RunDirError(
            f"{out} holds a previous {kind} run but also entries massmech did not write: "
            f"{', '.join(foreign[:5])}{' ...' if len(foreign) > 5 else ''}; move them out first"
        )


def check_out(
    out: str | os.PathLike, kind: Kind, *, overwrite: bool = False, resume: bool = False
) -> Path:
    """Check an output folder before any compute; creates nothing (a probe entry comes and goes).

    Args:
        out: The run folder.
        kind: The run kind (``"analyze"``, ``"ablate"``, ``"ablation"``, ...), or a tuple of it and
            its older names (a folder stamped with any of them is the same kind of run).
        overwrite: A previous run of the same kind may be replaced.
        resume: A previous run of the same kind is continued in place (resumable studies).

    Raises:
        RunDirError: ``out`` is a file, not writable, a folder massmech did not write, a run of
            another kind, or a previous run while neither ``overwrite`` nor ``resume`` is set.

    >>> import tempfile, pathlib
    >>> user = pathlib.Path(tempfile.mkdtemp()); _ = (user / "notes.txt").write_text("mine")
    >>> check_out(user, "analyze", overwrite=True)
    Traceback (most recent call last):
    ...
    massmech.errors.RunDirError: ... is not a massmech run folder ...
    """
    out = Path(out)
    _check_existing(out, kind, overwrite=overwrite, resume=resume)
    _probe(_nearest_dir(out if resume else out.absolute().parent), out)
    return out


def _stamp(folder: Path, kind: str, files: list[str] | None, *, config: dict | None = None,
           extra: dict | None = None) -> None:
    """Add the run kind (and the list of what massmech wrote, the config, ``extra``) to the folder's manifest."""
    found = {}
    try:
        found = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        found = {"versions": versions(), "git_hash": git_hash()}
    found["run_kind"] = kind
    if config is not None:
        found["config"] = config
    found.update(extra or {})
    if files is not None:
        found["files"] = sorted(set(files) | {MANIFEST})
    write_json(folder / MANIFEST, found)


@contextlib.contextmanager
def atomic_run_dir(out: str | os.PathLike, kind: str, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder that replaces ``out`` only if the block finishes.

    ``out`` may be new, empty, or a previous massmech run of the same ``kind`` holding nothing
    else (with ``overwrite``); anything else is refused before the block runs (see
    :func:`check_out`). The manifest in the folder is stamped with ``kind`` and the list of
    files written, which is what lets a later run recognise it. The folder gets the user's
    normal permissions (umask), like any folder they create.

    Args:
        out: Final folder.
        kind: Run kind recorded in its manifest.
        overwrite: Replace a previous run of the same kind.
    """
    out = check_out(out, kind, overwrite=overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()  # not mkdtemp: that would make the run folder private (0700)
    try:
        yield tmp
        _stamp(tmp, kind, [str(p.relative_to(tmp)) for p in tmp.rglob("*")])
        _check_existing(out, kind, overwrite=overwrite, resume=False)  # it may have changed meanwhile
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


RESULT_FILES = ("results.parquet", "results.csv", "summary.json")  # what a study's rerun rewrites
LOCK = ".massmech-lock"


def config_diff(stored: Any, config: Any, *, extends: tuple[str, ...] = ()) -> list[str]:
    """Top-level fields in which two configs (dataclasses or their JSON dicts) differ, less ``extends``.

    Values are compared as canonical JSON: tuples and lists, 5 and 5.0 are alike. A field that
    ``stored`` lacks (the run predates it) is no difference while ``config``, a dataclass, holds
    that field's default: the run was made with what the default now says.

    >>> config_diff({"ks": [2, 4], "n": 100}, {"ks": (3,), "n": 100.0})
    ['ks']
    """
    a = dataclasses.asdict(stored) if dataclasses.is_dataclass(stored) else dict(stored)
    b = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config)
    if dataclasses.is_dataclass(config):
        for f in dataclasses.fields(config):
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            if f.name not in a and f.name in b and default is not dataclasses.MISSING \
                    and canonical(b[f.name]) == canonical(default):
                a[f.name] = b[f.name]
    return sorted(k for k in set(a) | set(b)
                  if k not in extends and canonical(a.get(k)) != canonical(b.get(k)))


def open_study_dir(out: str | os.PathLike, kind: Kind, config: Any = None, *, overwrite: bool = False,
                   extends: tuple[str, ...] = (), cells: str | os.PathLike | None = None) -> Path:
    """Create (or reopen, to resume) the folder of a resumable study, marked with its kind and config.

    A new or empty folder is created and stamped at once, so a study killed before its first
    result is still recognised; an existing one must be a massmech study of the same kind *and
    config*: a rerun of the same config resumes, another config is refused unless ``overwrite``
    (then its results are replaced; its cells stay, keyed by content). Fields in ``extends`` may
    change on a resume (e.g. more training steps). ``cells``: the cell store the run uses, recorded
    relative to ``out`` (see :func:`cells_of`).

    Raises:
        RunDirError: See :func:`check_out`; or ``out`` holds a run of another config.
    """
    out = check_out(out, kind, resume=True)
    diff = check_study_config(out, _kinds(kind)[0], config, overwrite=overwrite, extends=extends)
    out.mkdir(parents=True, exist_ok=True)
    for name in RESULT_FILES if diff else ():  # overwrite: the other config's results go; its cells stay
        (out / name).unlink(missing_ok=True)
    if config is not None or read_manifest(out) is None:
        cfg = None if config is None else (dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config))
        extra = None if cells is None else {CELLS_KEY: os.path.relpath(Path(cells).absolute(), out.absolute())}
        _stamp(out, _kinds(kind)[0], None, config=cfg, extra=extra)
    return out


#: the manifest key of the cell store a study run uses, relative to its folder
CELLS_KEY = "cells"
#: the manifest key of when the run's numbers were computed: the oldest and newest ``created`` of the
#: cells it read (a run rebuilt from stored cells keeps the time its numbers first existed)
CELLS_CREATED_KEY = "cells_created"


def cells_of(out: str | os.PathLike) -> Path | None:
    """The cell store the study run in ``out`` recorded (``None``: no run, or one from before the record).

    >>> import tempfile
    >>> root = Path(tempfile.mkdtemp())
    >>> out = open_study_dir(root / "a" / "run", "sweep", {"ks": [2]}, cells=root / "shared")
    >>> cells_of(out) == root / "a" / "run" / ".." / ".." / "shared", cells_of(root / "nothing")
    (True, None)
    """
    found = read_manifest(out)
    rel = (found or {}).get(CELLS_KEY)
    return Path(out) / rel if isinstance(rel, str) else None


def check_study_config(out: str | os.PathLike, kind: str, config: Any, *, overwrite: bool = False,
                       extends: tuple[str, ...] = ()) -> list[str]:
    """The fields in which ``config`` differs from the study run in ``out`` (none if it has no run);
    raises unless ``overwrite`` when there are any. Creates nothing: call it before any compute.

    >>> import tempfile
    >>> out = open_study_dir(tempfile.mkdtemp() + "/run", "sweep", {"ks": [2, 4]})
    >>> check_study_config(out, "sweep", {"ks": [2, 4]}), check_study_config(out, "sweep", {"ks": [3]}, overwrite=True)
    ([], ['ks'])
    >>> check_study_config(out, "sweep", {"ks": [3]})
    Traceback (most recent call last):
    ...
    massmech.errors.RunDirError: ... holds an earlier sweep run of another config (it differs in ks); ...
    """
    found = read_manifest(out) if config is not None else None
    stored = None if found is None else found.get("config")
    diff = [] if stored is None else config_diff(stored, config, extends=extends)
    if diff and not overwrite:
        raise RunDirError(
            f"{out} holds an earlier {kind} run of another config (it differs in {', '.join(diff)}); massmech never "
            "replaces results silently: pass --overwrite (overwrite=True) to replace them, or choose another --out"
        )
    return diff


@contextlib.contextmanager
def study_lock(out: str | os.PathLike) -> Iterator[None]:
    """Hold ``out/.massmech-lock`` while a study writes its folder: a second writer is refused at once.

    The lock is the kernel's (``flock``), so a killed run never leaves a stale one.

    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> with study_lock(folder):
    ...     with study_lock(folder):
    ...         pass
    Traceback (most recent call last):
    ...
    massmech.errors.RunDirError: another massmech process (pid ...) is writing ...; wait for it to end, or choose another --out
    """
    import fcntl

    path = Path(out) / LOCK
    fh = open(path, "a+")  # noqa: SIM115 - held for the block
    try:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.seek(0)
            holder = fh.read().strip() or "?"
            raise RunDirError(f"another massmech process (pid {holder}) is writing {out}; wait for it to end, "
                              "or choose another --out") from None
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        yield
    finally:
        fh.close()  # releases the lock


def finish_study_dir(out: Path, kind: str, manifest_data: dict, files: list[str] | None = None) -> None:
    """Write a resumable study's final manifest, keeping its run kind and the files it wrote."""
    write_json(out / MANIFEST, manifest_data | {"run_kind": kind} | ({"files": files} if files is not None else {}))


class Staged:
    """What :func:`staged` yields: the temporary folder (``path``) and, once the block ends, the
    files that moved into place (``files``, relative paths)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.files: list[str] = []

    def __truediv__(self, name: str) -> Path:
        return self.path / name


def _written_before(out: Path) -> set[str]:
    """The files the study run in ``out`` wrote last time (its manifest's ``files``)."""
    found = read_manifest(out)
    return set((found or {}).get("files") or ())


@contextlib.contextmanager
def staged(out: str | os.PathLike) -> Iterator[Staged]:
    """A temporary folder inside ``out`` whose files replace ``out``'s when the block finishes.

    Each file moves into place with one rename, so a reader sees a whole file or the previous
    one, never half of one; a failed block leaves nothing behind. Files the study wrote last time
    (the manifest's ``files``) and no longer writes are removed; a file massmech did not write is
    never touched, and one in the way of a new file stops the move before anything changes.

    >>> import tempfile, pathlib
    >>> out = pathlib.Path(tempfile.mkdtemp())
    >>> with staged(out) as tmp:
    ...     _ = (tmp / "figures").mkdir(), (tmp / "figures" / "a.png").write_text("x"), (tmp / "summary.json").write_text("{}")
    >>> sorted(p.name for p in out.iterdir()), (out / "figures" / "a.png").read_text(), tmp.files
    (['figures', 'summary.json'], 'x', ['figures/a.png', 'summary.json'])
    """
    out = Path(out)
    tmp = out / f".staged-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    result = Staged(tmp)
    try:
        yield result
        new = sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file())
        before = _written_before(out)
        foreign = [f for f in new if (out / f).exists() and f not in before and f not in RESULT_FILES]
        if foreign:
            raise RunDirError(f"{out} holds {', '.join(foreign[:5])}, which massmech did not write there and would "
                              "replace: move it, or choose another --out")
        for f in new:
            (out / f).parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp / f, out / f)
        for f in sorted(before - set(new) - {MANIFEST}):  # written last time, not this time
            (out / f).unlink(missing_ok=True)
        result.files = new
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
