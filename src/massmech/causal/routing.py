"""The book-keeping of a disrupted batch: which row carries which condition, what was changed.

* :class:`RowRouter` — a batch's description (:meth:`~RowRouter.describe`): per row its condition
  (or none), its prompt and full masks and its stable id, checked on arrival; it answers which
  rows carry a condition and which positions a row's statistics and replacement use. Like
  nnsight's ``Batcher``, it only routes rows; it never computes a disruption.
* :class:`Accountant` — per row, over one forward pass: activations changed, cells selected, the
  squared change and the token variance at the replaced positions (the *removed variance*).
* :func:`check_changed` — the guard: a row under a disruption that changed nothing raises
  :class:`~massmech.errors.NoOpDisruptionError`, naming the examples.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from jaxtyping import Bool, Int
from torch import Tensor

from massmech.causal.disruption import Disruption
from massmech.errors import DisruptionError, NoOpDisruptionError


class RowRouter:
    """Which row of a batch carries which of ``n_conditions`` conditions (see :meth:`describe`).

    >>> router = RowRouter(2)
    >>> router.describe(torch.tensor([1, -1, 0]), torch.tensor([[True, False]] * 3))
    >>> router.rows(1, 3).tolist(), router.seeds(torch.tensor([0, 2])).tolist()
    ([0], [0, 2])
    """

    def __init__(self, n_conditions: int) -> None:
        self.n_conditions = n_conditions
        self.describe(None if n_conditions == 1 else torch.zeros(0, dtype=torch.long))

    def describe(
        self,
        row_condition: Int[Tensor, " batch"] | None,
        prompt_mask: Bool[Tensor, "batch pos"] | None = None,
        full_mask: Bool[Tensor, "batch pos"] | None = None,
        row_ids: Int[Tensor, " batch"] | None = None,
    ) -> None:
        """Describe the next batch (the arguments of :meth:`Intervention.set_batch
        <massmech.causal.intervention.Intervention.set_batch>`), checked here.

        Raises:
            DisruptionError: Masks or ids of another row count, a condition index out of range,
                a prompt outside the sequence, or a row without a prompt token.
        """
        if row_condition is None:
            if self.n_conditions != 1 or prompt_mask is not None or full_mask is not None:
                raise DisruptionError("row_condition=None needs exactly one condition and no masks")
            self.row_condition = None
        else:
            self.row_condition = row_condition.long().cpu()
            b = len(self.row_condition)
            for name, t in (("prompt_mask", prompt_mask), ("full_mask", full_mask), ("row_ids", row_ids)):
                if t is not None and len(t) != b:
                    raise DisruptionError(f"{name} has {len(t)} rows, row_condition {b}")
            for ci in self.row_condition.unique().tolist():
                if not -1 <= ci < self.n_conditions:
                    raise DisruptionError(f"row condition {ci} out of range for {self.n_conditions} conditions")
        self.prompt_mask = None if prompt_mask is None else prompt_mask.bool()
        self.full_mask = self.prompt_mask if full_mask is None else full_mask.bool()
        if self.prompt_mask is not None:
            if self.full_mask.shape != self.prompt_mask.shape:
                raise DisruptionError(f"full_mask {tuple(self.full_mask.shape)} and prompt_mask "
                                      f"{tuple(self.prompt_mask.shape)} differ in shape")
            if (self.prompt_mask & ~self.full_mask).any():
                raise DisruptionError("prompt_mask marks positions that full_mask does not: the prompt must be "
                                      "part of the sequence")
            empty = (~self.prompt_mask.any(1)).nonzero().flatten()
            if len(empty):
                raise DisruptionError(f"rows {empty.tolist()[:8]} have no prompt token: statistics need at least one")
        self.row_ids = None if row_ids is None else row_ids.long().cpu()

    def check_rows(self, b: int) -> None:
        """A forward pass of ``b`` rows must be the batch described.

        >>> router = RowRouter(2)
        >>> router.describe(torch.tensor([0, 1]))
        >>> router.check_rows(3)
        Traceback (most recent call last):
        massmech.errors.DisruptionError: set_batch described 2 rows, the forward pass has 3: call set_batch(row_condition, ...) before each batch
        """
        if self.row_condition is not None and len(self.row_condition) != b:
            raise DisruptionError(
                f"set_batch described {len(self.row_condition)} rows, the forward pass has {b}: "
                "call set_batch(row_condition, ...) before each batch"
            )

    def rows(self, ci: int, b: int) -> Int[Tensor, " rows"]:
        """The rows (on the CPU) of a ``b``-row pass that carry condition ``ci``."""
        if self.row_condition is None:
            return torch.arange(b)
        return (self.row_condition == ci).nonzero().flatten()

    def seeds(self, rows: Int[Tensor, " rows"]) -> Int[Tensor, " rows"]:
        """The rows' stable ids (their examples' uids; the row index when none were given)."""
        rows = rows.cpu()
        return rows if self.row_ids is None else self.row_ids[rows]

    def masks(self, c: Disruption, rows: Tensor, pos: int, device: torch.device) -> tuple[Tensor, Tensor]:
        """``(stat, apply)`` ``[rows, pos]`` of a prompt pass: where the rows' statistics are taken
        (their prompt) and where the replacement applies (the prompt, or every real token under
        ``kv_cache="every_step"``).

        >>> router = RowRouter(2)
        >>> router.describe(torch.tensor([0, 1]), torch.tensor([[True, False]] * 2), torch.ones(2, 2, dtype=torch.bool))
        >>> stat, apply = router.masks(Disruption(kv_cache="every_step"), torch.tensor([1]), 2, torch.device("cpu"))
        >>> stat.tolist(), apply.tolist()
        ([[True, False]], [[True, True]])
        """
        if self.prompt_mask is None:
            stat = torch.ones((len(rows), pos), dtype=torch.bool, device=device)
            return stat, stat
        if self.prompt_mask.shape[1] != pos:
            raise DisruptionError(f"prompt_mask has {self.prompt_mask.shape[1]} positions, the forward pass {pos}: "
                                  "call set_batch for this batch")
        stat = self.prompt_mask.to(device)[rows]
        return stat, (self.full_mask.to(device)[rows] if c.kv_cache == "every_step" else stat)

    def where(self, idle: Tensor) -> str:
        """Idle rows as a reader finds them: example uids when known.

        >>> router = RowRouter(2)
        >>> router.describe(torch.tensor([0, 1]), row_ids=torch.tensor([17, 42]))
        >>> router.where(torch.tensor([1]))
        'examples (uid) [42]'
        """
        if self.row_ids is None:
            return f"rows {idle.tolist()[:8]} of this batch"
        return f"examples (uid) {self.row_ids[idle].tolist()[:8]}"


class Accountant:
    """Per-row counts of one forward pass, kept on the activations' device (see the module docstring).

    >>> acc = Accountant()
    >>> acc.start(2, torch.device("cpu"))
    >>> acc.count(torch.tensor([1]), selected=torch.tensor([3]), changed=torch.tensor([6]))
    >>> acc.changed.tolist(), acc.selected.tolist()
    ([0, 6], [0, 3])
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Empty counters: the next pass allocates its own (:meth:`start`).

        >>> acc = Accountant()
        >>> acc.start(2, torch.device("cpu"))
        >>> acc.reset()
        >>> acc.started
        False
        """
        self.changed = torch.zeros(0, dtype=torch.long)
        self.selected = torch.zeros(0, dtype=torch.long)
        self.removed = torch.zeros(0, dtype=torch.float64)  # squared change of replaced values
        self.variance = torch.zeros(0, dtype=torch.float64)  # token variance of the disrupted sites
        self.energy = torch.zeros(0, dtype=torch.float64)  # their sum of squares

    @property
    def started(self) -> bool:
        """Whether this pass's counters exist (a disrupting hook has run).

        >>> acc = Accountant()
        >>> acc.started, (acc.start(1, torch.device("cpu")), acc.started)[1]
        (False, True)
        """
        return len(self.changed) > 0

    def start(self, b: int, device: torch.device) -> None:
        """Counters for a ``b``-row pass (the first disrupting hook of the pass calls it)."""
        self.changed = torch.zeros(b, dtype=torch.long, device=device)
        self.selected = torch.zeros(b, dtype=torch.long, device=device)
        self.removed = torch.zeros(b, dtype=torch.float64, device=device)
        self.variance = torch.zeros(b, dtype=torch.float64, device=device)
        self.energy = torch.zeros(b, dtype=torch.float64, device=device)

    def count(self, rows: Tensor, *, changed: Tensor, selected: Tensor | None = None) -> None:
        """Add per-row counts of changed activations (and of selected cells)."""
        dev = self.changed.device
        self.changed[rows.to(dev)] += changed.to(dev)
        if selected is not None:
            self.selected[rows.to(dev)] += selected.to(dev)

    def account(self, rows: Tensor, old: Tensor, new: Tensor, stat: Tensor, apply: Tensor) -> None:
        """Add the rows' squared change and their token variance (about each dim's prompt mean) at
        the applied positions, in fp32 then fp64.

        >>> acc = Accountant()
        >>> acc.start(1, torch.device("cpu"))
        >>> old = torch.tensor([1.0, 3.0]).view(1, 2, 1, 1)  # one row, two tokens, mean 2
        >>> every = torch.ones(1, 2, dtype=torch.bool)
        >>> acc.account(torch.tensor([0]), old, torch.full_like(old, 2.0), every, every)  # mean replacement
        >>> acc.removed.item(), acc.variance.item()  # all the token variance removed
        (2.0, 2.0)
        """
        w = stat[..., None, None].float()
        mean = (old.float() * w).sum(1, keepdim=True) / w.sum(1, keepdim=True).clamp_min(1.0)
        a = apply[..., None, None].float()
        variance = (((old.float() - mean) ** 2) * a).flatten(1).sum(1)
        removed = (((new.float() - old.float()) ** 2) * a).flatten(1).sum(1)
        energy = ((old.float() ** 2) * a).flatten(1).sum(1)
        dev = self.removed.device
        self.removed[rows.to(dev)] += removed.double().to(dev)
        self.variance[rows.to(dev)] += variance.double().to(dev)
        self.energy[rows.to(dev)] += energy.double().to(dev)

    def totals(self, b: int) -> tuple[Tensor, Tensor, Tensor]:
        """``(changed, selected, removed share)`` per row on the CPU (zeros if no hook ran).

        >>> Accountant().totals(2)[0].tolist()  # no hook ran in this pass
        [0, 0]
        """
        if len(self.changed) != b:
            return (torch.zeros(b, dtype=torch.long), torch.zeros(b, dtype=torch.long),
                    torch.zeros(b, dtype=torch.float64))
        variance = self.variance.cpu()
        share = (self.removed.cpu() / variance.clamp_min(1e-30)).where(variance > 0, 0.0)
        return self.changed.cpu(), self.selected.cpu(), share

    def energy_share(self, b: int) -> Tensor:
        """Per row, the squared change as a share of the disrupted sites' sum of squares (their
        *energy*; mean replacement of a dim with a large mean removes its variance, not its energy).

        >>> acc = Accountant()
        >>> acc.start(1, torch.device("cpu"))
        >>> old = torch.tensor([1.0, 3.0]).view(1, 2, 1, 1)
        >>> every = torch.ones(1, 2, dtype=torch.bool)
        >>> acc.account(torch.tensor([0]), old, torch.full_like(old, 2.0), every, every)
        >>> acc.energy_share(1).item()  # 2 of 1 + 9
        0.2
        """
        if len(self.changed) != b:
            return torch.zeros(b, dtype=torch.float64)
        energy = self.energy.cpu()
        return (self.removed.cpu() / energy.clamp_min(1e-30)).where(energy > 0, 0.0)


def check_changed(
    conditions: Sequence[Disruption | None], expected: Sequence[int], router: RowRouter, b: int,
    changed: Tensor, selected: Tensor, *, prefill: bool,
) -> None:
    """The no-op guard: every row under an ``expected`` condition changed at least one activation.

    Raises:
        NoOpDisruptionError: Naming the disruption, the examples and the likely reason.

    >>> router = RowRouter(1)
    >>> check_changed([Disruption(rule="topk", k=1)], [0], router, 2, torch.tensor([3, 0]), torch.tensor([1, 0]),
    ...               prefill=True)
    Traceback (most recent call last):
    massmech.errors.NoOpDisruptionError: disruption qk.pre.top1 changed no activation of rows [1] of this batch in this forward pass: the topk rule selected no dim (lower lam, or use rule='topk')
    """
    for ci in expected:
        rows = router.rows(ci, b)
        idle = rows[changed[rows] == 0]
        if not len(idle):
            continue
        c = conditions[ci]
        reason = (
            f": the {c.rule} rule selected no dim (lower lam, or use rule='topk')" if selected[idle].sum() == 0
            else ": every replaced value equalled the original (a mean over a single token?)"
        )
        raise NoOpDisruptionError(
            f"disruption {c.label()} changed no activation of {router.where(idle)} "
            f"in this {'forward pass' if prefill else 'decode step'}" + reason
        )
