"""The paper's claim as one number: contextual tasks lose more (relatively) than parametric ones.

A disruption of massive values is claimed to hurt tasks that read the context (retrieval,
passkey, in-context copying) much more than tasks that recall knowledge from the weights. Two
separate "significant drop" rows do not show that; their *interaction* does:

    interaction = relative drop(contextual) - relative drop(parametric)

where the relative drop of a kind of task is ``1 - mean disrupted accuracy / mean baseline
accuracy``, both means taken over its tasks with **each task weighted equally** (a task's
accuracy is the mean over its own examples, whatever their number). The interval is a
hierarchical paired bootstrap: within each kind, tasks are resampled with replacement, then,
within each drawn task, examples are resampled with replacement, each example keeping its
baseline and disrupted verdict together. It thus reflects both which tasks were chosen and
which examples each has.

>>> import numpy as np
>>> ones, zeros = np.ones(20), np.zeros(20)
>>> half = np.r_[np.ones(10), np.zeros(10)]
>>> res = paired_bootstrap_interaction([(ones, half)], [(ones, ones)], n_boot=200)
>>> res.estimate
0.5
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from massmech.errors import AnalysisError

Pairs = Sequence[tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class InteractionResult:
    """Relative drop of contextual tasks minus that of parametric tasks, with its interval.

    Attributes:
        estimate: the interaction on the data.
        ci_low: lower percentile-bootstrap bound.
        ci_high: upper bound.
        drop_contextual: relative drop of the contextual tasks.
        drop_parametric: relative drop of the parametric tasks.
        n_contextual: examples over all contextual tasks.
        n_parametric: examples over all parametric tasks.
        n_tasks_contextual: contextual tasks.
        n_tasks_parametric: parametric tasks.
        alpha: the interval covers ``1 - alpha``.

    >>> r = InteractionResult(0.2, 0.1, 0.3, 0.25, 0.05, 300, 200, 3, 2, 0.05)
    >>> r
    InteractionResult(0.200 [0.100, 0.300] 95%: contextual drop 0.250 (3 tasks, n=300), parametric drop 0.050 (2 tasks, n=200))
    """

    estimate: float
    ci_low: float
    ci_high: float
    drop_contextual: float
    drop_parametric: float
    n_contextual: int
    n_parametric: int
    n_tasks_contextual: int
    n_tasks_parametric: int
    alpha: float

    def __repr__(self) -> str:
        return (f"InteractionResult({self.estimate:.3f} [{self.ci_low:.3f}, {self.ci_high:.3f}] "
                f"{100 * (1 - self.alpha):.0f}%: contextual drop {self.drop_contextual:.3f} "
                f"({self.n_tasks_contextual} tasks, n={self.n_contextual}), parametric drop "
                f"{self.drop_parametric:.3f} ({self.n_tasks_parametric} tasks, n={self.n_parametric}))")


def paired_bootstrap_interaction(
    contextual: Pairs, parametric: Pairs, *, n_boot: int = 2000, seed: int = 0, alpha: float = 0.05,
) -> InteractionResult:
    """Interaction of the relative drops of contextual and parametric tasks (module docstring).

    Args:
        contextual: per contextual task, ``(baseline, disrupted)`` 0/1 verdicts on the same
            examples, same order.
        parametric: the same for the parametric tasks.
        n_boot: bootstrap replicates.
        seed: seed of the resampling.
        alpha: the interval covers ``1 - alpha`` (percentile bootstrap).

    Returns:
        An :class:`InteractionResult`.

    Raises:
        AnalysisError: a kind without tasks, a task without examples, unpaired or non-0/1
            verdicts, a kind whose baseline accuracy is 0 (in the data or in a replicate), or
            ``n_boot``/``alpha`` out of range.

    >>> ones = np.ones(10)
    >>> drop = np.r_[np.zeros(4), np.ones(6)]
    >>> r = paired_bootstrap_interaction([(ones, drop)] * 2, [(ones, ones)], n_boot=100)
    >>> round(r.estimate, 2), r.n_tasks_contextual, r.n_contextual, r.ci_low <= r.estimate <= r.ci_high
    (0.4, 2, 20, True)
    """
    if n_boot < 1 or not 0.0 < alpha < 1.0:
        raise AnalysisError(f"paired_bootstrap_interaction needs n_boot >= 1 and 0 < alpha < 1, "
                            f"got n_boot={n_boot}, alpha={alpha}")
    kinds = {"contextual": _checked(contextual, "contextual"), "parametric": _checked(parametric, "parametric")}
    rng = np.random.default_rng(seed)
    point, boot = {}, {}
    for kind, tasks in kinds.items():
        base = np.array([b.mean() for b, _ in tasks])
        dis = np.array([d.mean() for _, d in tasks])
        point[kind] = _relative_drop(base[None], dis[None], kind)[0]
        boot[kind] = _relative_drop(*_resample(tasks, n_boot, rng), kind)
    diffs = boot["contextual"] - boot["parametric"]
    lo, hi = np.quantile(diffs, [alpha / 2, 1 - alpha / 2])
    ctx, par = kinds["contextual"], kinds["parametric"]
    return InteractionResult(
        estimate=float(point["contextual"] - point["parametric"]), ci_low=float(lo), ci_high=float(hi),
        drop_contextual=float(point["contextual"]), drop_parametric=float(point["parametric"]),
        n_contextual=sum(b.size for b, _ in ctx), n_parametric=sum(b.size for b, _ in par),
        n_tasks_contextual=len(ctx), n_tasks_parametric=len(par), alpha=alpha,
    )


def _checked(tasks: Pairs, kind: str) -> list[tuple[np.ndarray, np.ndarray]]:
    if len(tasks) == 0:
        raise AnalysisError(f"paired_bootstrap_interaction: no {kind} tasks")
    out = []
    for i, pair in enumerate(tasks):
        if len(pair) != 2:
            raise AnalysisError(f"{kind} task {i}: expected a (baseline, disrupted) pair, got {len(pair)} items")
        base, dis = (np.asarray(x, dtype=float) for x in pair)
        if base.ndim != 1 or base.shape != dis.shape or base.size == 0:
            raise AnalysisError(f"{kind} task {i}: baseline and disrupted must be the same non-empty 1-D "
                                f"examples, got shapes {base.shape} and {dis.shape}")
        if not (np.isin(base, (0.0, 1.0)).all() and np.isin(dis, (0.0, 1.0)).all()):
            raise AnalysisError(f"{kind} task {i}: verdicts must be 0/1")
        out.append((base, dis))
    return out


def _resample(tasks: list[tuple[np.ndarray, np.ndarray]], n_boot: int, rng: np.random.Generator):
    """Per replicate and task slot, the baseline and disrupted accuracy of a resampled task.

    Tasks are drawn with replacement into ``len(tasks)`` slots; each slot then resamples its
    task's examples (pairs kept together), independently of other slots drawing the same task.
    """
    n_tasks = len(tasks)
    picks = rng.integers(0, n_tasks, size=(n_boot, n_tasks))
    base_acc = np.empty((n_boot, n_tasks))
    dis_acc = np.empty((n_boot, n_tasks))
    for t, (base, dis) in enumerate(tasks):
        slots = np.nonzero(picks == t)
        idx = rng.integers(0, base.size, size=(slots[0].size, base.size))
        base_acc[slots] = base[idx].mean(1)
        dis_acc[slots] = dis[idx].mean(1)
    return base_acc, dis_acc


def _relative_drop(base_acc: np.ndarray, dis_acc: np.ndarray, kind: str) -> np.ndarray:
    """``1 - mean(dis) / mean(base)`` per row, tasks (columns) weighted equally."""
    base_mean = base_acc.mean(1)
    if (base_mean <= 0).any():
        raise AnalysisError(f"{kind} tasks: baseline accuracy 0 in {(base_mean <= 0).sum()} of {base_mean.size} "
                            "resamples; a relative drop needs a baseline above 0")
    return 1.0 - dis_acc.mean(1) / base_mean
