"""Executors: who computes a study's pending work units.

* :class:`SerialExecutor` (default): this process, one unit after another.
* :class:`ProcessExecutor`: local worker processes. Units are routed by *group* (a model spec),
  so each worker loads each of its models once (a large group is split over idle workers); each worker writes its cells to the shared
  :class:`~massmech.infra.cells.CellStore` as they finish, so a killed worker or driver loses only
  the units in flight and a rerun resumes.

An executor is any object with ``run(study, config, units, store, ctx, *, total, done, progress)``;
a distributed one (Ray) plugs in the same way.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
import os
from collections.abc import Sequence
from typing import Any

from tqdm.auto import tqdm

from massmech.errors import ConfigError
from massmech.infra.cells import CellStore
from massmech.infra.study import CellSpec, Context, run_units

EXECUTORS = ("serial", "processes")


class SerialExecutor:
    """Every unit in this process, in plan order."""

    def __repr__(self) -> str:
        return "SerialExecutor()"

    def run(self, study: Any, config: Any, units: Sequence[Sequence[CellSpec]], store: CellStore, ctx: Context, *,
            total: int, done: int, progress: bool = True) -> None:
        with tqdm(total=total, initial=done, desc=f"{study.name} cells", unit="cell", disable=not progress) as bar:
            run_units(study, config, units, store, ctx, on_cell=lambda: bar.update(1))


def _assign(units: Sequence[Sequence[CellSpec]], workers: int) -> list[list[list[CellSpec]]]:
    """Units split over workers. A group's units stay on as few workers as its size warrants
    (each worker loads each of its groups' models once); with more workers than groups, large
    groups are split so no worker idles while another holds many units."""
    groups: dict[str, list[list[CellSpec]]] = {}
    for unit in units:
        groups.setdefault(unit[0].group, []).append(list(unit))
    total = sum(map(len, units))
    chunks: list[list[list[CellSpec]]] = []
    for us in groups.values():
        share = max(1, min(len(us), round(workers * sum(map(len, us)) / total)))
        parts: list[list[list[CellSpec]]] = [[] for _ in range(share)]
        for u in sorted(us, key=len, reverse=True):
            min(parts, key=lambda p: sum(map(len, p))).append(u)
        chunks.extend(parts)
    plan: list[list[list[CellSpec]]] = [[] for _ in range(workers)]
    for chunk in sorted(chunks, key=lambda c: -sum(map(len, c))):
        min(plan, key=lambda p: sum(map(len, p))).extend(chunk)
    return [p for p in plan if p]


def _work(study: Any, config: Any, units: list[list[CellSpec]], root: str, version: int, threads: int) -> int:
    import torch

    torch.set_num_threads(threads)
    store = CellStore(root, study.name, version=version)
    run_units(study, config, units, store, Context())
    return sum(map(len, units))


class ProcessExecutor:
    """Local worker processes (spawned), ``threads`` torch threads each.

    Args:
        workers: Processes (default: CPU cores, at most one per unit).
        threads: Torch threads per worker (default: cores // workers, at least 1).
    """

    def __init__(self, workers: int | None = None, threads: int | None = None) -> None:
        if workers is not None and workers < 1:
            raise ConfigError(f"workers must be >= 1, got {workers}")
        self.workers = workers
        self.threads = threads

    def __repr__(self) -> str:
        return f"ProcessExecutor(workers={self.workers}, threads={self.threads})"

    def run(self, study: Any, config: Any, units: Sequence[Sequence[CellSpec]], store: CellStore, ctx: Context, *,
            total: int, done: int, progress: bool = True) -> None:
        if not units:
            return
        if ctx.local_only:
            raise ConfigError(
                "models passed in (model=...) or a custom loader live in this process only; worker "
                "processes load models by spec: drop model= or use the serial executor"
            )
        cores = os.cpu_count() or 1
        workers = min(self.workers or cores, len(units))
        threads = self.threads or max(1, cores // workers)
        shares = _assign(units, workers)
        with tqdm(total=total, initial=done, desc=f"{study.name} cells", unit="cell", disable=not progress) as bar, \
                cf.ProcessPoolExecutor(len(shares), mp_context=mp.get_context("spawn")) as pool:
            futures = [pool.submit(_work, study, config, share, str(store.root), store.version, threads) for share in shares]
            wanted = {c.key for u in units for c in u}
            while True:
                finished, _ = cf.wait(futures, timeout=1.0)
                bar.n = done + sum(k in store for k in wanted)
                bar.refresh()
                if len(finished) == len(futures):
                    break
            for f in futures:
                f.result()  # re-raise a worker's error (its finished cells are kept)


def resolve_executor(executor: Any = None, **options: Any) -> Any:
    """An executor from a name (``serial``, ``processes``) or an executor object."""
    if executor is None or executor == "serial":
        return SerialExecutor()
    if executor == "processes":
        return ProcessExecutor(**options)
    if isinstance(executor, str):
        raise ConfigError(f"unknown executor {executor!r}; executors are {', '.join(EXECUTORS)}")
    if not callable(getattr(executor, "run", None)):
        raise ConfigError(f"an executor needs a run(...) method; got {type(executor).__name__}")
    return executor
