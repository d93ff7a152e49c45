"""Which unit a free Ray worker computes next (:class:`UnitScheduler`, used by
:class:`~massmech.infra.executors.RayExecutor`)."""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence

from massmech.infra.study import CellSpec


class UnitScheduler:
    """Which unit a free worker computes next: units of the model it holds while any are left,
    then another model's.

    A worker whose model has no units left takes a model nobody holds (the most cells first);
    failing that it joins a model that others hold when that pays: with ``m`` workers on it,
    ``W`` seconds of its cells left and ``L`` seconds to load it, one more worker ends it sooner
    iff ``L < W / m``. ``L`` and the seconds per cell are measured as units finish
    (:meth:`record`), else taken from ``prior`` (:meth:`CellStore.timings`); while neither is
    known, a model is split by its share of the cells (``workers x cells / all cells``). A worker
    given nothing is done: units are only ever taken, so nothing worth joining appears later.

    >>> from massmech.infra.study import CellSpec
    >>> units = [[CellSpec(f"{g}{i}", {}, group=g, unit=str(i))] for g, n in (("a", 3), ("b", 1)) for i in range(n)]
    >>> s = UnitScheduler(units, workers=2)
    >>> [s.next(None)[0], s.next(None)[0]]  # one worker per model
    ['a', 'b']
    >>> s.record("b", cells=1, seconds=10.0, load_seconds=0.1); s.record("a", cells=1, seconds=10.0, load_seconds=0.1)
    >>> s.next("b")[0]  # b is done; a has 2 units (20 s) left and loads in 0.1 s: join it
    'a'
    """

    def __init__(self, units: Sequence[Sequence[CellSpec]], workers: int,
                 prior: Mapping[str, Mapping[str, float]] | None = None) -> None:
        self.queues: dict[str, deque[list[CellSpec]]] = {}
        for unit in sorted(units, key=len, reverse=True):
            self.queues.setdefault(unit[0].group, deque()).append(list(unit))
        self.workers, self.total = workers, sum(map(len, units))
        self.on: dict[str, int] = dict.fromkeys(self.queues, 0)
        prior = prior or {}
        self.load = {g: prior[g]["load_seconds"] for g in self.queues if "load_seconds" in prior.get(g, {})}
        self.cell = {g: prior[g]["cell_seconds"] for g in self.queues if "cell_seconds" in prior.get(g, {})}
        self._measured: dict[str, list[float]] = {}

    def __repr__(self) -> str:
        left = {g: sum(map(len, q)) for g, q in self.queues.items()}
        return f"UnitScheduler(workers={self.workers}, cells_left={left})"

    def record(self, group: str, *, cells: int, seconds: float, load_seconds: float | None) -> None:
        """A unit of ``cells`` cells of ``group`` took ``seconds`` (less its load); the model took
        ``load_seconds`` to load, if it was loaded for it."""
        sums = self._measured.setdefault(group, [0.0, 0.0])
        sums[0] += seconds
        sums[1] += cells
        self.cell[group] = sums[0] / max(sums[1], 1)
        if load_seconds is not None:
            self.load[group] = load_seconds

    def attach(self, group: str | None) -> str | None:
        """A worker that holds ``group``'s model already (a session's actor, from an earlier run):
        counted on that model while it has no more than its share of workers, so it is handed those
        units first. Returns what to pass to :meth:`next` as the worker's ``holding``.

        >>> from massmech.infra.study import CellSpec
        >>> s = UnitScheduler([[CellSpec("a0", {}, group="a", unit="0")], [CellSpec("b0", {}, group="b", unit="0")]], 2)
        >>> s.attach("a"), s.attach("a"), s.attach("z")  # one worker's share of a's cells; z has none here
        ('a', None, None)
        """
        if group is None or group not in self.queues:
            return None
        left = sum(map(len, self.queues[group]))
        if self.on[group] >= max(1, round(self.workers * left / self.total)):
            return None
        self.on[group] += 1
        return group

    def next(self, holding: str | None) -> tuple[str, list[CellSpec]] | None:
        """``(group, unit)`` for a worker holding ``holding``'s model (or none), or ``None``: done."""
        if holding is not None and self.queues.get(holding):
            return holding, self.queues[holding].popleft()
        left = {g: sum(map(len, q)) for g, q in self.queues.items() if q}
        if not left:
            return None
        nobody = [g for g in left if not self.on[g]]
        if nobody:
            group = max(nobody, key=left.__getitem__)
        else:
            worth = [g for g in left if self._worth_joining(g, left[g])]
            if not worth:
                return None
            group = max(worth, key=lambda g: left[g] * self.cell.get(g, 1.0) / self.on[g])
        if holding is not None:
            self.on[holding] -= 1
        self.on[group] += 1
        return group, self.queues[group].popleft()

    def _worth_joining(self, group: str, cells_left: int) -> bool:
        load, cell, m = self.load.get(group), self.cell.get(group), self.on[group]
        if load is None or cell is None:
            return round(self.workers * cells_left / self.total) > m
        return load < cells_left * cell / m
