"""One study protocol: a frozen config -> cells -> run -> consolidate -> table + files + manifest + summary.

A study (:class:`Study`, generic over its config type ``C`` and table type ``T``) is an object with

* ``name``: its cell store and run kind; ``version``: the schema version of its cells;
* ``plan(config, ctx) -> [CellSpec]``: every cell of the config, each with its key parts, the
  *group* it needs loaded (a model spec: an executor loads a group once per worker) and the
  *unit* it is computed in (cells of one unit share work, e.g. conditions folded into one batch);
  a plan may grow once cells exist (the twins' checkpoints are analysed after training):
  :func:`run_study` plans again until every planned cell is stored;
* ``run_unit(config, cells, ctx) -> {key: (data, tables)}``: compute the cells of one unit (a
  result may add a third item, ``{file name: writer}``, for cells that store files, e.g. a capture);
* ``consolidate(config, cells) -> T``: the study's table from the stored cells (a DataFrame is
  written as ``results.parquet``/``.csv``);
* ``finish(config, table, out, ctx) -> dict``: its other files (figures, tables) written into
  ``out``, and the summary (``summary.json``).

:func:`run_study` runs every study the same way: it checks the output folder before any compute,
skips the cells the store already holds (same key: same config parts, data and schema version),
hands the rest to an executor, rebuilds the table from the store and writes the folder. Because
every cell goes through the one :class:`~massmech.infra.cells.CellStore`, a study run serially, in
local processes or on a cluster, stopped and resumed anywhere, gives the same table.
"""



from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar, runtime_checkable

import pandas as pd

from massmech.errors import ConfigError, StudyInterrupted
from massmech.files.io import write_json
from massmech.files.provenance import manifest
from massmech.files.runs import (
    CELLS_CREATED_KEY,
    CELLS_KEY,
    check_out,
    check_study_config,
    finish_study_dir,
    open_study_dir,
    read_manifest,
    staged,
    study_lock,
)
from massmech.infra.cells import Cell, CellStore

RESULTS = "results"  # results.parquet / results.csv
SUMMARY = "summary.json"
CELLS = "cells"


@dataclasses.dataclass(frozen=True)
class CellSpec:
    """One planned cell: its key and key parts, the group (model) it needs and its work unit."""

    key: str
    parts: dict
    group: str
    unit: str
    payload: Any = None  # what run_unit needs beyond the config (picklable)


def unit_cells(study: Study, group: str, units: Sequence[str], parts_of: Callable[[str], dict]) -> list[CellSpec]:
    """One cell per unit (e.g. per task of one model): its key from ``parts_of(unit)``, the unit as payload.

    >>> class S: name, version = "demo", 1
    >>> [(c.unit, c.parts) for c in unit_cells(S(), "m", ["a", "b"], lambda u: {"task": u})]
    [('a', {'task': 'a'}), ('b', {'task': 'b'})]
    """
    from massmech.infra.cells import cell_key

    cells = []
    for unit in units:
        parts = parts_of(unit)
        cells.append(CellSpec(cell_key(study.name, parts, version=study.version), parts, group=group, unit=unit,
                              payload=unit))
    return cells


class Context:
    """Per-worker state: loaded models (one per group, loaded once), cached derived objects, and
    the run folder (``out``: where a study keeps files larger than cells, e.g. checkpoints)."""

    def __init__(self, loader: Callable[[str], Any] | None = None, models: dict | None = None,
                 load_options: dict | None = None, out: str | os.PathLike | None = None) -> None:
        self.out = None if out is None else Path(out)
        self._loader = loader
        self._models: dict[str, Any] = dict(models or {})
        self._cache: dict[Any, Any] = {}
        #: seconds each model took to load in this context (what a scheduler weighs against its cells)
        self.load_seconds: dict[str, float] = {}
        # models handed in (or a custom loader) exist in this process only: workers cannot share them
        self.local_only = loader is not None or bool(models)
        #: keyword arguments of :func:`~massmech.core.loading.load_model`: ``device``,
        #: ``device_map``, ``offload_folder`` say where a model is put, not what it computes, so
        #: they are not part of any cell key; a ``dtype`` other than float32 is (:meth:`model_id`).
        #: Workers of every executor load with the same options.
        self.load_options: dict[str, Any] = {k: v for k, v in (load_options or {}).items() if v is not None}
        #: the study's stored cells, set by :func:`run_study` before ``finish`` (e.g. to write
        #: per-example tables into the run folder, whichever cell store holds them)
        self.cells: dict[str, Cell] = {}

    def model_id(self, spec: str) -> str:
        """The model as cell keys name it: its spec, plus ``@dtype`` when not loaded in float32.

        >>> Context().model_id("smollm2-135m"), Context(load_options={"dtype": "bfloat16"}).model_id("smollm2-135m")
        ('smollm2-135m', 'smollm2-135m@bfloat16')
        """
        from massmech.core.loading import resolve_dtype

        dtype = str(resolve_dtype(self.load_options.get("dtype", "float32"))).removeprefix("torch.")
        return spec if dtype == "float32" else f"{spec}@{dtype}"

    def model(self, spec: str) -> Any:
        """The loaded model of a group, loaded on first use."""
        if spec not in self._models:
            start = time.perf_counter()
            if self._loader is None:
                from massmech.core.loading import load_model

                self._models[spec] = load_model(spec, **self.load_options)
            else:
                self._models[spec] = self._loader(spec)
            self.load_seconds[spec] = time.perf_counter() - start
        return self._models[spec]

    def release(self, keep: str) -> None:
        """Drop every loaded model but ``keep``'s (a worker moving to another model's cells holds one)."""
        for spec in [s for s in self._models if s != keep]:
            del self._models[spec]

    def worker(self) -> Context:
        """A fresh context for a worker process: the same load options and run folder, no models yet."""
        return Context(load_options=self.load_options, out=self.out)

    def carry(self, held: Context) -> Context:
        """This (fresh) context, holding the models ``held`` has loaded: a worker's next run keeps its
        models, and nothing else (its cache is per run). Returns ``self``.

        >>> old = Context(models={"m": object()}); Context().carry(old).models.keys()
        dict_keys(['m'])
        """
        self._models, self.load_seconds = held._models, held.load_seconds
        return self

    @property
    def models(self) -> dict[str, Any]:
        return dict(self._models)

    def cached(self, key: Any, make: Callable[[], Any]) -> Any:
        """``make()`` once per worker and key (calibration statistics, prepared data, ...)."""
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]


C = TypeVar("C")
T = TypeVar("T")
#: what ``run_unit`` returns per cell: ``(data, tables)`` or ``(data, tables, {file name: writer})``
CellResult = tuple[Any, dict] | tuple[Any, dict, dict]


@runtime_checkable
class Study(Protocol[C, T]):
    """The protocol every study follows (see the module docstring)."""

    name: str
    version: int

    def plan(self, config: C, ctx: Context) -> list[CellSpec]: ...

    def run_unit(self, config: C, cells: Sequence[CellSpec], ctx: Context) -> dict[str, CellResult]: ...

    def consolidate(self, config: C, cells: dict[str, Cell]) -> T: ...

    def finish(self, config: C, table: T, out: Path, ctx: Context) -> dict: ...


def _run_cells(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` is the cell store of another massmech run (``RUN/cells``): shared as it is."""
    folder = Path(folder)
    return folder.name == CELLS and folder.is_dir() and read_manifest(folder.parent) is not None


def store_of(study: Study, root: str | os.PathLike) -> CellStore:
    """The cell store of a study under ``root``, at its schema version."""
    return CellStore(root, study.name, version=study.version)


def units_of(cells: Sequence[CellSpec]) -> list[list[CellSpec]]:
    """Cells grouped into their work units, in plan order."""
    units: dict[tuple[str, str], list[CellSpec]] = {}
    for c in cells:
        units.setdefault((c.group, c.unit), []).append(c)
    return list(units.values())


def run_units(study: Study, config: Any, units: Sequence[Sequence[CellSpec]], store: CellStore, ctx: Context,
              on_cell: Callable[[], None] | None = None) -> None:
    """Compute units one after another in this process, each cell stored as soon as its unit ends,
    with its timing (seconds per cell of its unit, less any model load; the load's seconds)."""
    for unit in units:
        loads, start = dict(ctx.load_seconds), time.perf_counter()
        results = study.run_unit(config, unit, ctx)
        load = sum(v for k, v in ctx.load_seconds.items() if loads.get(k) != v)
        timing = {"group": unit[0].group, "cell_seconds": max(0.0, time.perf_counter() - start - load) / len(unit),
                  "load_seconds": ctx.load_seconds.get(unit[0].group)}
        missing = [c.key for c in unit if c.key not in results]
        if missing:
            raise RuntimeError(f"{study.name}: run_unit returned no result for cells {missing}")  # a bug
        for c in unit:
            data, tables, *files = results[c.key]
            store.put(c.key, c.parts, data=data, tables=tables, files=files[0] if files else None, timing=timing)
            if on_cell is not None:
                on_cell()


MAX_PHASES = 8  # plans that grow as cells complete (train, then analyse) settle within this many rounds


def compute_cells(
    study: Study, config: Any, store: CellStore, *, executor: Any = None, ctx: Context | None = None,
    progress: bool = True, planned: Sequence[CellSpec] | None = None,
) -> dict[str, Cell]:
    """Every cell of the study's plan, from the store where it holds them, the rest computed by the
    executor; planned again until the plan holds no new cell (see the module docstring).

    Args:
        planned: The first round's plan, if the caller made it already (to check a config before
            any folder is created).

    Returns:
        Key -> stored cell, in plan order.
    """
    from massmech.infra.executors import resolve_executor

    executor, ctx = resolve_executor(executor), ctx or Context()
    # an executor with a session (Ray) keeps its workers from one phase to the next
    with executor if hasattr(executor, "__enter__") else contextlib.nullcontext():
        for phase in range(MAX_PHASES):
            planned = list(planned) if phase == 0 and planned is not None else study.plan(config, ctx)
            keys = [c.key for c in planned]
            if len(set(keys)) != len(keys):
                raise ConfigError(f"{study.name}: the plan holds the same cell twice")
            pending = [c for c in planned if c.key not in store]
            if not pending:
                break
            try:
                executor.run(study, config, units_of(pending), store, ctx, total=len(planned),
                             done=len(planned) - len(pending), progress=progress)
            except KeyboardInterrupt:
                saved = sum(k in store for k in keys)
                raise StudyInterrupted(f"interrupted: {saved} of {len(keys)} cells saved in {store.folder}; rerun the "
                                       "same command to resume") from None
        else:
            raise RuntimeError(f"{study.name}: the plan still grew after {MAX_PHASES} rounds")  # a bug
    stored = {k: cell for k in keys if (cell := store.get(k)) is not None}
    if len(stored) != len(keys):
        raise RuntimeError(f"{study.name}: {len(keys) - len(stored)} cells missing after the run")  # a bug
    return stored


def run_study(
    study: Study[C, T],
    config: C,
    out: str | os.PathLike,
    *,
    executor: Any = None,
    cells: str | os.PathLike | None = None,
    ctx: Context | None = None,
    progress: bool = True,
    overwrite: bool = False,
    kinds: tuple[str, ...] = (),
) -> T:
    """Run (or resume) a study into ``out/``; returns its table.

    Writes ``out/results.parquet`` and ``.csv`` (when the table is a DataFrame), the study's own
    files (``finish``), ``out/summary.json`` and ``out/manifest.json`` (with the oldest and newest
    ``created`` of the cells read, under ``cells_created``: when the numbers were computed); the cells live in
    ``out/cells`` or in a shared store (``cells=``: a store folder, or another run's ``RUN/cells``). ``executor`` is ``"serial"`` (default),
    ``"processes"``, ``"ray"`` or an executor object (see :mod:`massmech.infra.executors`).

    ``out`` may hold a previous run of the same study and config (it is resumed); a run of
    another config is refused unless ``overwrite`` (its results are then replaced), and a second
    process writing the same ``out`` is refused while the first runs (:func:`~massmech.files.runs.study_lock`).
    ``kinds``: older run kinds of this study that a resumed folder may carry.
    """
    from massmech.infra.executors import resolve_executor

    executor = resolve_executor(executor)  # a bad name: error before any work
    kind = (study.name, *kinds)
    check_out(out, kind, resume=True)  # refuses a folder massmech did not write, before any work
    if cells is not None and not _run_cells(cells):
        check_out(cells, "cells", resume=True)
    check_study_config(out, study.name, config, overwrite=overwrite)  # another config: refused before any work
    ctx = ctx or Context()
    ctx.out = Path(out)
    planned = study.plan(config, ctx)  # a config the model or data cannot take: refused before any folder appears
    out = open_study_dir(out, kind)
    with study_lock(out):
        root = out / CELLS if cells is None else Path(cells) if _run_cells(cells) else open_study_dir(cells, "cells")
        out = open_study_dir(out, kind, config, overwrite=overwrite, cells=root)  # the store recorded: a rerun finds it
        stored = compute_cells(study, config, store_of(study, root), executor=executor, ctx=ctx, progress=progress,
                               planned=planned)
        table = study.consolidate(config, stored)
        ctx.cells = stored
        with staged(out) as tmp:
            if isinstance(table, pd.DataFrame):
                table.to_parquet(tmp / f"{RESULTS}.parquet", index=False)
                table.to_csv(tmp / f"{RESULTS}.csv", index=False)
            summary = study.finish(config, table, tmp.path, ctx)
            write_json(tmp / SUMMARY, summary)
        info = {s: m.info_dict() for s, m in ctx.models.items() if hasattr(m, "info_dict")} or None
        made = sorted(c.meta["created"] for c in stored.values() if c.meta.get("created"))
        finish_study_dir(out, study.name, manifest(config, model_info=info, seed=getattr(config, "seed", None))
                         | {"cell_version": {study.name: study.version}, CELLS_KEY: (read_manifest(out) or {}).get(CELLS_KEY),
                            CELLS_CREATED_KEY: {"first": made[0], "last": made[-1]} if made else None},
                         files=tmp.files)
    return table


def run_with_model(study: Study[C, T], config: C, out: str | os.PathLike, *, model: Any = None, executor: Any = None,
                   cells: str | os.PathLike | None = None, load_options: dict | None = None, overwrite: bool = False,
                   progress: bool = True) -> T:
    """:func:`run_study` for a study whose config names one model (``config.model``): a model already
    loaded (``model``) is the one used, and the manifest names it."""
    if model is not None:
        config = dataclasses.replace(config, model=model.spec or model.info.name)
    ctx = Context(models={config.model: model} if model is not None else None, load_options=load_options)
    return run_study(study, config, out, executor=executor, cells=cells, ctx=ctx, progress=progress, overwrite=overwrite)
