"""Executors: who computes a study's pending work units.

* :class:`SerialExecutor` (default): this process, one unit after another.
* :class:`ProcessExecutor`: local worker processes. Units are routed by *group* (a model spec),
  so each worker loads each of its models once (a large group is split over idle workers); each
  worker writes its cells to the shared :class:`~massmech.infra.cells.CellStore` as they finish,
  so a killed worker or driver loses only the units in flight and a rerun resumes.
* :class:`RayExecutor`: the same on a Ray cluster (``pip install 'massmech[ray]'``), scheduled by
  unit: each free actor is handed its next unit by :class:`UnitScheduler`, from its own model's
  units while any are left, then from another model's when that model's load is cheap next to
  its remaining cells (measured in this run, or kept in the cell store from earlier runs). A
  worker killed mid-unit is restarted and the unit retried; cells are written to the store by the
  workers, so the store must sit on a filesystem every node sees.

An executor is any object with ``run(study, config, units, store, ctx, *, total, done, progress)``.
Whoever computes a cell, the store is the same, so a study started with one executor and finished
with another gives the same table.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
import os
import uuid
from collections.abc import Sequence
from typing import Any

from tqdm.auto import tqdm

from massmech.errors import ConfigError
from massmech.infra.cells import CellStore
from massmech.infra.scheduling import UnitScheduler
from massmech.infra.study import CellSpec, Context, run_units

EXECUTORS = ("serial", "processes", "ray")


class SerialExecutor:
    """Every unit in this process, in plan order."""

    def __repr__(self) -> str:
        return "SerialExecutor()"

    def run(self, study: Any, config: Any, units: Sequence[Sequence[CellSpec]], store: CellStore, ctx: Context, *,
            total: int, done: int, progress: bool = True) -> None:
        with tqdm(total=total, initial=done, desc=f"{study.name} cells", unit="cell", disable=not progress) as bar:
            run_units(study, config, units, store, ctx, on_cell=lambda: bar.update(1))


def _chunks(units: Sequence[Sequence[CellSpec]], workers: int) -> list[list[list[CellSpec]]]:
    """Units cut into single-group chunks: a group's units stay on as few chunks as its size
    warrants (each chunk loads its model once); with more workers than groups, large groups are
    split so no worker idles while another holds many units."""
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
    return chunks


def _assign(units: Sequence[Sequence[CellSpec]], workers: int) -> list[list[list[CellSpec]]]:
    """Units split over ``workers`` (the chunks of :func:`_chunks`, balanced by cell count)."""
    plan: list[list[list[CellSpec]]] = [[] for _ in range(workers)]
    for chunk in sorted(_chunks(units, workers), key=lambda c: -sum(map(len, c))):
        min(plan, key=lambda p: sum(map(len, p))).extend(chunk)
    return [p for p in plan if p]


def _check_shareable(ctx: Context, workers: str) -> None:
    """Workers load models by spec: a model passed in (or a custom loader) cannot go to them."""
    if ctx.local_only:
        raise ConfigError(f"models passed in (model=...) or a custom loader live in this process only; {workers} "
                          "load models by spec: drop model= or use the serial executor")


def _work(study: Any, config: Any, units: list[list[CellSpec]], root: str, version: int, threads: int,
          ctx: Context) -> int:
    import torch

    torch.set_num_threads(threads)
    store = CellStore(root, study.name, version=version)
    run_units(study, config, units, store, ctx)
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
        _check_shareable(ctx, "worker processes")
        cores = os.cpu_count() or 1
        workers = min(self.workers or cores, len(units))
        threads = self.threads or max(1, cores // workers)
        shares = _assign(units, workers)
        with tqdm(total=total, initial=done, desc=f"{study.name} cells", unit="cell", disable=not progress) as bar, \
                cf.ProcessPoolExecutor(len(shares), mp_context=mp.get_context("spawn")) as pool:
            futures = [pool.submit(_work, study, config, share, str(store.root), store.version, threads,
                                   ctx.worker()) for share in shares]
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
    """An executor from a name (``serial``, ``processes``, ``ray``) or an executor object.

    ``options`` go to the executor's constructor (``workers``; for Ray also ``address``, ``cpus``,
    ``gpus``); options that are ``None`` are dropped. A serial executor takes none.

    >>> resolve_executor("processes", workers=2)
    ProcessExecutor(workers=2, threads=None)
    >>> resolve_executor("serial", workers=None)
    SerialExecutor()
    """
    options = {k: v for k, v in options.items() if v is not None}
    if executor is None or executor == "serial":
        if options:
            raise ConfigError(f"the serial executor takes no options; got {sorted(options)} (use --executor processes or ray)")
        return SerialExecutor()
    if executor == "processes":
        return ProcessExecutor(**options)
    if executor == "ray":
        return RayExecutor(**options)
    if isinstance(executor, str):
        raise ConfigError(f"unknown executor {executor!r}; executors are {', '.join(EXECUTORS)}")
    if not callable(getattr(executor, "run", None)):
        raise ConfigError(f"an executor needs a run(...) method; got {type(executor).__name__}")
    return executor


def _ray() -> Any:
    try:
        import ray
    except ImportError as e:
        raise ConfigError("--executor ray needs Ray: pip install 'massmech[ray]' (or pip install 'ray>=2.40')") from e
    return ray


class _CellWorker:
    """A Ray actor's state: the models it holds (loaded once) and the stores it writes.

    Each call carries its study, config, store and context, so one actor serves every run of an
    executor's session, and a restarted actor (built from its constructor's arguments alone) can
    take any call. A run (``token``) gets a fresh context holding the models already loaded.
    """

    def __init__(self, threads: int) -> None:
        self.threads = threads  # set on the first call: construction stays instant, so a probe answers on placement
        self.ctx: Context | None = None
        self.token: str | None = None
        self.stores: dict[tuple[str, str, int], CellStore] = {}

    def run(self, token: str, ctx: Context, study: Any, config: Any, root: str, version: int,
            unit: list[CellSpec]) -> dict:
        """Compute a unit (its model loaded here if not yet; other models dropped) and say how long it took."""
        import time

        if self.ctx is None:
            import torch

            torch.set_num_threads(self.threads)
        if token != self.token:
            self.ctx, self.token = ctx if self.ctx is None else ctx.carry(self.ctx), token
        store = self.stores.setdefault((root, study.name, version), CellStore(root, study.name, version=version))
        group = unit[0].group
        self.ctx.release(keep=group)
        loaded = group in self.ctx.models
        # a retried unit (its worker was killed) skips the cells it had already written
        todo = [c for c in unit if c.key not in store]
        start = time.perf_counter()
        if todo:
            run_units(study, config, [todo], store, self.ctx)
        load = None if loaded or group not in self.ctx.load_seconds else self.ctx.load_seconds[group]
        return {"keys": [c.key for c in unit], "cells": len(todo), "load_seconds": load,
                "seconds": max(0.0, time.perf_counter() - start - (load or 0.0))}

    def rest(self) -> None:
        """The run is over: drop its cached data (a fresh context), keep the models."""
        if self.ctx is not None:
            self.ctx, self.token = self.ctx.worker().carry(self.ctx), None

    def pid(self) -> int:
        return os.getpid()


class RayExecutor:
    """Cells as tasks on a Ray cluster: ``workers`` actors, each handed one unit at a time.

    :class:`UnitScheduler` decides which: a worker stays on its model while that model has units,
    then takes a model nobody holds, or joins one whose load is cheap next to its remaining cells
    (a worker holds one model at a time: a large model is never loaded twice on one worker, and a
    second worker loads it only when that pays). Load and cell times are measured as units finish
    and kept in each cell's provenance, so a rerun plans with the last run's. Each actor asks
    Ray for ``cpus`` CPUs and ``gpus`` GPUs; Ray runs as many as the cluster holds and starts the
    next when one finishes its units (its resources are released). A worker killed in the middle
    of a unit is restarted (``retries`` times) and the unit retried: its cells are written once,
    atomically, so nothing is lost or duplicated. Workers write their cells to the store
    themselves: on a cluster the store (``--cells``) must be on a filesystem every node sees.

    A session (``with executor:``) keeps the actors, and the models they hold, from one ``run`` to
    the next: the phases of a study (a control planned after the arm it matches), and every study
    of ``massmech reproduce``, start on warm workers instead of paying each worker's start, imports
    and model load again. The session ends at the ``with``'s end: its actors are killed, and Ray is
    shut down if the session started it. A ``run`` outside a session is a session of its own.

    Args:
        address: Ray cluster address (``"auto"``, ``"HOST:PORT"``, ``"ray://HOST:10001"``);
            default: a Ray already initialised in this process, else a local one (shut down at the end).
        workers: Actors in all (default: the cluster's CPUs ÷ ``cpus``, or its GPUs ÷ ``gpus``).
        cpus: CPUs per actor (also its torch threads). gpus: GPUs per actor (default: 1 when
            the config's ``device`` is CUDA, else 0).
        retries: Restarts of a killed actor (and retries of its unit).
    """

    def __init__(self, address: str | None = None, workers: int | None = None, cpus: float = 1.0,
                 gpus: float | None = None, retries: int = 3) -> None:
        if workers is not None and workers < 1:
            raise ConfigError(f"workers must be >= 1, got {workers}")
        if cpus <= 0 or (gpus is not None and gpus < 0):
            raise ConfigError(f"cpus must be > 0 and gpus >= 0; got cpus={cpus}, gpus={gpus}")
        self.address, self.workers, self.cpus, self.gpus, self.retries = address, workers, cpus, gpus, retries
        self._depth, self._started, self._live = 0, False, False
        self._pool: list[Any] = []  # the session's actors
        self._pool_key: str | None = None  # what they were made for (their context's options, CPUs, GPUs)
        self._held: dict[Any, str | None] = {}  # the model each actor was last handed
        self._placed: set[Any] = set()  # actors that have answered a call: Ray has placed them
        self._probes: dict[Any, Any] = {}

    def __repr__(self) -> str:
        return f"RayExecutor(address={self.address!r}, workers={self.workers}, cpus={self.cpus}, gpus={self.gpus})"

    def __enter__(self) -> RayExecutor:
        self._depth += 1  # Ray itself starts with the session's first run (a run with nothing to do needs none)
        return self

    def __exit__(self, *exc: Any) -> None:
        self._depth -= 1
        if self._depth == 0 and self._live:
            try:
                self._drop_pool()
                if self._started:
                    _ray().shutdown()
            finally:
                self._live = self._started = False

    def _start(self) -> Any:
        ray = _ray()
        if not self._live:
            self._started = not ray.is_initialized()
            if self._started:
                ray.init(address=self.address, include_dashboard=False, log_to_driver=False)
            self._live = True
        return ray

    def _drop_pool(self) -> None:
        ray = _ray()
        for a in self._pool:
            ray.kill(a, no_restart=True)
        self._pool, self._pool_key, self._held, self._placed, self._probes = [], None, {}, set(), {}

    def _gpus(self, config: Any, ctx: Context) -> float:
        if self.gpus is not None:
            return self.gpus
        device = ctx.load_options.get("device") or (config.get("device") if isinstance(config, dict)
                                                     else getattr(config, "device", None))
        return 1.0 if str(device or "").startswith("cuda") else 0.0

    def run(self, study: Any, config: Any, units: Sequence[Sequence[CellSpec]], store: CellStore, ctx: Context, *,
            total: int, done: int, progress: bool = True) -> None:
        if not units:
            return
        _check_shareable(ctx, "Ray workers")
        with self:
            try:
                self._run(self._start(), study, config, units, store, ctx, total=total, done=done, progress=progress)
            except BaseException:
                self._drop_pool()  # calls may still be in flight: the session's next run starts a fresh pool
                raise

    def _actors(self, ray: Any, ctx: Context, workers: int, gpus: float) -> list[Any]:
        """``workers`` actors: the session's own where they were made for the same context, new ones
        for the rest."""
        threads = max(1, int(self.cpus))
        key = repr((sorted(ctx.load_options.items()), self.cpus, gpus))
        if key != self._pool_key:
            self._drop_pool()
            self._pool_key = key
        actor = ray.remote(_CellWorker).options(num_cpus=self.cpus, num_gpus=gpus, max_restarts=self.retries,
                                               max_task_retries=self.retries)
        while len(self._pool) < workers:
            a = actor.remote(threads)
            self._pool.append(a)
            self._held[a], self._probes[a] = None, a.pid.remote()  # the probe answers once Ray has placed it
        return self._pool[:workers]

    def _retire(self, ray: Any, a: Any, waiting: bool) -> None:
        """An actor with nothing more to do in this run: kept for the session's next run, unless an
        actor of this run may still wait for resources (``waiting``: one not yet placed has a call
        pending); then it is killed and its resources go to that one."""
        if waiting:
            ray.kill(a, no_restart=True)
            self._pool.remove(a)
            self._held.pop(a, None)

    def _is_placed(self, ray: Any, a: Any) -> bool:
        if a not in self._placed and a in self._probes and ray.wait([self._probes[a]], timeout=0)[0]:
            self._placed.add(a)
        return a in self._placed

    def _run(self, ray: Any, study: Any, config: Any, units: Sequence[Sequence[CellSpec]], store: CellStore,
             ctx: Context, *, total: int, done: int, progress: bool) -> None:
        gpus = self._gpus(config, ctx)
        have = ray.cluster_resources()
        if gpus > have.get("GPU", 0) or self.cpus > have.get("CPU", 0):
            raise ConfigError(f"each Ray worker asks for {self.cpus} CPUs and {gpus} GPUs, but the cluster has "
                              f"{have.get('CPU', 0)} CPUs and {have.get('GPU', 0)} GPUs")
        fit = min([int(have["CPU"] // self.cpus)] + ([int(have["GPU"] // gpus)] if gpus else []))  # what the cluster holds
        workers = min(self.workers or max(1, fit), len(units))
        schedule = UnitScheduler(units, workers, prior=store.timings())
        root, version, token, wctx = str(store.root), store.version, uuid.uuid4().hex, ctx.worker()
        pending: dict[Any, tuple[Any, list[CellSpec]]] = {}
        holding = {a: schedule.attach(self._held.get(a)) for a in self._actors(ray, ctx, workers, gpus)}

        def feed(a: Any) -> None:
            nxt = schedule.next(holding[a])
            if nxt is None:
                self._retire(ray, a, waiting=not all(self._is_placed(ray, b) for b, _ in pending.values()))
                return
            holding[a] = self._held[a] = nxt[0]
            pending[a.run.remote(token, wctx, study, config, root, version, nxt[1])] = (a, nxt[1])

        for a in list(holding):
            feed(a)
        wanted = {c.key for u in units for c in u}
        errors: list[BaseException] = []
        with tqdm(total=total, initial=done, desc=f"{study.name} cells (ray)", unit="cell", disable=not progress) as bar:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
                for ref in ready:
                    a, unit = pending.pop(ref)
                    self._placed.add(a)
                    try:
                        report = ray.get(ref)
                    except ray.exceptions.RayActorError as e:  # gone for good: no more units for it
                        errors.append(e)
                        self._pool.remove(a)
                        self._held.pop(a, None)
                        continue
                    except Exception as e:  # a unit's error: keep the others going
                        errors.append(getattr(e, "cause", None) or e)
                        self._held[a] = None  # what it holds is unknown now
                    else:
                        if report["cells"]:
                            schedule.record(unit[0].group, cells=report["cells"], seconds=report["seconds"],
                                            load_seconds=report["load_seconds"])
                        lost = [c.key for c in unit if c.key not in store]
                        if lost:
                            errors.append(ConfigError(
                                f"a Ray worker computed {len(lost)} cells that are not in the store at {store.root}: "
                                "on a cluster put the cell store (--cells) on a filesystem every node sees"))
                    feed(a)
                bar.n = done + sum(k in store for k in wanted)
                bar.refresh()
        if errors:
            self._drop_pool()  # an actor that failed may be gone: the next run starts a fresh pool
            raise errors[0]  # finished cells are kept; a rerun resumes
        for a in self._pool:
            a.rest.remote()  # this run's cached data goes; the models stay for the next run
