"""One study protocol: a frozen config -> cells -> run -> consolidate -> tidy table + manifest + summary.

A study is an object with

* ``name``: its key in :data:`~massmech.infra.cells.CELL_VERSIONS`; ``kind``: the ``run_kind`` of its folder;
* ``plan(config, ctx) -> [CellSpec]``: every cell of the config, each with its key parts, the
  *group* it needs loaded (a model spec: an executor loads a group once per worker) and the
  *unit* it is computed in (cells of one unit share work, e.g. conditions folded into one batch);
* ``run_unit(config, cells, ctx) -> {key: (data, tables)}``: compute the cells of one unit (a
  result may add a third item, ``{file name: writer}``, for cells that store files, e.g. a capture);
* ``consolidate(config, cells) -> DataFrame``: the tidy table from the stored cells;
* ``finish(config, table, out, ctx) -> dict``: extra files and the summary (``summary.json``).

:func:`run_study` runs it: it checks the output folder before any compute, skips the cells the
store already holds (same key: same config parts, data and schema version), hands the rest to an
executor, and rebuilds the table from the store. Because every cell goes through the one
:class:`~massmech.infra.cells.CellStore`, a study run serially, in local processes or on a
cluster, stopped and resumed anywhere, gives the same table.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from massmech.errors import ConfigError
from massmech.infra.cells import Cell, CellStore
from massmech.infra.io import atomic_write, write_json
from massmech.infra.runs import (
    check_out,
    check_study_config,
    finish_study_dir,
    manifest,
    open_study_dir,
    study_lock,
)

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


class Context:
    """Per-worker state: loaded models (one per group, loaded once) and cached derived objects."""

    def __init__(self, loader: Callable[[str], Any] | None = None, models: dict | None = None,
                 load_options: dict | None = None) -> None:
        self._loader = loader
        self._models: dict[str, Any] = dict(models or {})
        self._cache: dict[Any, Any] = {}
        # models handed in (or a custom loader) exist in this process only: workers cannot share them
        self.local_only = loader is not None or bool(models)
        #: keyword arguments of :func:`~massmech.core.loading.load_model`: ``device``,
        #: ``device_map``, ``offload_folder`` say where a model is put, not what it computes, so
        #: they are not part of any cell key; a ``dtype`` other than float32 is (:meth:`model_id`).
        #: Workers of every executor load with the same options.
        self.load_options: dict[str, Any] = {k: v for k, v in (load_options or {}).items() if v is not None}

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
            if self._loader is None:
                from massmech.core.loading import load_model

                self._models[spec] = load_model(spec, **self.load_options)
            else:
                self._models[spec] = self._loader(spec)
        return self._models[spec]

    def worker(self) -> Context:
        """A fresh context for a worker process: the same load options, no models yet."""
        return Context(load_options=self.load_options)

    @property
    def models(self) -> dict[str, Any]:
        return dict(self._models)

    def cached(self, key: Any, make: Callable[[], Any]) -> Any:
        """``make()`` once per worker and key (calibration statistics, prepared data, ...)."""
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]


@runtime_checkable
class Study(Protocol):
    name: str
    kind: str

    def plan(self, config: Any, ctx: Context) -> list[CellSpec]: ...

    def run_unit(self, config: Any, cells: Sequence[CellSpec], ctx: Context) -> dict[str, tuple[Any, dict]]: ...

    def consolidate(self, config: Any, cells: dict[str, Cell]) -> Any: ...

    def finish(self, config: Any, table: Any, out: Path, ctx: Context) -> dict: ...


def units_of(cells: Sequence[CellSpec]) -> list[list[CellSpec]]:
    """Cells grouped into their work units, in plan order."""
    units: dict[tuple[str, str], list[CellSpec]] = {}
    for c in cells:
        units.setdefault((c.group, c.unit), []).append(c)
    return list(units.values())


def run_units(study: Study, config: Any, units: Sequence[Sequence[CellSpec]], store: CellStore, ctx: Context,
              on_cell: Callable[[], None] | None = None) -> None:
    """Compute units one after another in this process, each cell stored as soon as its unit ends."""
    for unit in units:
        results = study.run_unit(config, unit, ctx)
        missing = [c.key for c in unit if c.key not in results]
        if missing:
            raise RuntimeError(f"{study.name}: run_unit returned no result for cells {missing}")  # a bug
        for c in unit:
            data, tables, *files = results[c.key]
            store.put(c.key, c.parts, data=data, tables=tables, files=files[0] if files else None)
            if on_cell is not None:
                on_cell()


def compute_cells(
    study: Study, config: Any, planned: Sequence[CellSpec], store: CellStore, *, executor: Any = None,
    ctx: Context | None = None, progress: bool = True,
) -> dict[str, Cell]:
    """The planned cells, from the store where it holds them, the rest computed by the executor.

    Returns:
        Key -> stored cell, in plan order.
    """
    from massmech.infra.executors import resolve_executor

    keys = [c.key for c in planned]
    if len(set(keys)) != len(keys):
        raise ConfigError(f"{study.name}: the plan holds the same cell twice")
    pending = [c for c in planned if c.key not in store]
    resolve_executor(executor).run(study, config, units_of(pending), store, ctx or Context(), total=len(planned),
                                   done=len(planned) - len(pending), progress=progress)
    stored = {k: cell for k in keys if (cell := store.get(k)) is not None}
    if len(stored) != len(keys):
        raise RuntimeError(f"{study.name}: {len(keys) - len(stored)} cells missing after the run")  # a bug
    return stored


def run_study(
    study: Study,
    config: Any,
    out: str | os.PathLike,
    *,
    executor: Any = None,
    cells: str | os.PathLike | None = None,
    ctx: Context | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> Any:
    """Run (or resume) a study into ``out/``; returns its tidy table.

    Writes ``out/results.parquet`` and ``.csv``, ``out/summary.json`` and ``out/manifest.json``;
    the cells live in ``out/cells`` or in a shared store (``cells=``). ``executor`` is
    ``"serial"`` (default), ``"processes"`` or an executor object (see :mod:`massmech.infra.executors`).

    ``out`` may hold a previous run of the same study and config (it is resumed); a run of
    another config is refused unless ``overwrite`` (its results are then replaced), and a second
    process writing the same ``out`` is refused while the first runs (:func:`~massmech.infra.runs.study_lock`).
    """
    from massmech.infra.executors import resolve_executor

    executor = resolve_executor(executor)  # a bad name: error before any work
    check_out(out, study.kind, resume=True)  # refuses a folder massmech did not write, before any work
    if cells is not None:
        check_out(cells, "cells", resume=True)
    check_study_config(out, study.kind, config, overwrite=overwrite)  # another config: refused before any work
    ctx = ctx or Context()
    planned = study.plan(config, ctx)
    out = open_study_dir(out, study.kind)
    with study_lock(out):
        out = open_study_dir(out, study.kind, config, overwrite=overwrite)
        return _run_locked(study, config, planned, out, cells, executor, ctx, progress)


def _run_locked(study: Study, config: Any, planned: list[CellSpec], out: Path, cells: str | os.PathLike | None,
                executor: Any, ctx: Context, progress: bool) -> Any:
    store = CellStore(open_study_dir(cells, "cells") if cells is not None else out / CELLS, study.name)
    stored = compute_cells(study, config, planned, store, executor=executor, ctx=ctx, progress=progress)
    table = study.consolidate(config, stored)
    for suffix, write in (("parquet", lambda p: table.to_parquet(p, index=False)),
                          ("csv", lambda p: table.to_csv(p, index=False))):
        atomic_write(out / f"{RESULTS}.{suffix}", write)
    summary = study.finish(config, table, out, ctx)
    write_json(out / SUMMARY, summary)
    info = {s: m.info_dict() for s, m in ctx.models.items() if hasattr(m, "info_dict")} or None
    finish_study_dir(out, study.kind, manifest(config, model_info=info, seed=getattr(config, "seed", None)))
    return table
