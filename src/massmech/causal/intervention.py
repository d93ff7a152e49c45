"""Disruptions applied as TransformerLens hooks, row by row, with a guard against silent no-ops.

Statistics (``M`` and the mean) always come from the *prompt* tokens only — never from padding
or from the answer being scored — and are applied at every prompt position, as in the paper.

An :class:`Intervention` turns disruptions (:mod:`massmech.causal.disruption`) into hooks for a
batch whose rows may each carry a different condition (conditions folded into one batched
forward pass). After every forward pass it checks that each disrupted row changed at least one
activation: a disruption that changes nothing raises
:class:`~massmech.errors.NoOpDisruptionError` instead of passing silently. In plain-hook mode a
one-token forward pass is refused: during cached generation it would be a decode step treated as
a new prompt, whose per-token mean is the token itself. (The paper's public code avoids that by
disrupting only when ``q_len != 1``, e.g. ``modeling_llama.py`` of MingyuJ666/Rope_with_LLM:
decode steps are untouched and the disrupted prompt keys stay in the cache, which is massmech's
``kv_cache="prefill"``.)

Example::

    d = Disruption(target="qk", stage="pre", rule="lambda", lam=5)
    with disrupt(model, d):
        logits = model.logits(tokens)            # tokens: [batch, pos], no padding
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from jaxtyping import Bool, Int
from torch import Tensor

from massmech.causal.disruption import Disruption
from massmech.causal.routing import Accountant, RowRouter, check_changed
from massmech.causal.selection import select
from massmech.core.models import LoadedModel
from massmech.core.qkvstats import QKVStats
from massmech.core.rotation import Rotation
from massmech.core.sites import from_heads, table_hooks, to_heads
from massmech.errors import DisruptionError


class Intervention:
    """Hooks that apply one condition per batch row (``None`` = undisturbed row).

    Args:
        model: The model.
        conditions: The distinct disruptions (``None`` allowed: baseline rows).
        calibration: Statistics for ``selection="calibration"`` / ``replace="calib_mean"``.

    Use: ``set_batch`` before each batch (which condition each row carries, which positions are
    the prompt), then run the model inside ``model.hooks(iv.fwd_hooks)``
    (:meth:`active` does both). After each pass, ``last_changed``, ``last_selected`` and
    ``last_removed`` report per row how many activations changed, how many (layer, head, dim)
    cells were replaced, and the *removed variance*: the squared change of the replaced values
    as a fraction of the token variance (about each dim's prompt mean) of the disrupted sites at
    the disrupted positions (``last_removed_energy``: the same change as a fraction of their sum
    of squares). Under mean replacement that is exactly the share of token variance
    the disruption removed; a control that replaces more dims of smaller variance can remove as
    much (see ``control="matched"``). ``prompt_selected`` keeps ``last_selected`` of the prompt
    pass through the decode steps of a generation.

    >>> import massmech as mm
    >>> model = mm.load_model("tiny-llama")
    >>> iv = Intervention(model, [None, Disruption(rule="topk", k=1)])  # row 0: baseline, row 1: top-1
    >>> iv.set_batch(torch.tensor([-1, 1]), prompt_mask=torch.tensor([[True, True, True, False]] * 2))
    >>> with torch.inference_mode(), iv.active():
    ...     model.forward(torch.tensor([[5, 6, 7, 8]] * 2))
    >>> iv.last_selected.tolist(), iv.last_changed.tolist()  # 2 layers x 6 Q/K heads; x 3 prompt tokens
    ([0, 12], [0, 36])
    """

    def __init__(
        self,
        model: LoadedModel,
        conditions: Sequence[Disruption | None],
        calibration: QKVStats | None = None,
    ) -> None:
        self.model = model
        self.conditions = list(conditions)
        self.calibration = calibration
        for c in self.conditions:
            if c is not None:
                c.validate(model, calibration)
        self._pair = torch.as_tensor(model.rope.dim_to_pair()) if model.rope_or_none is not None else None
        # (site, stage, layer) -> condition indices acting there
        where: dict[tuple[str, str, int], list[int]] = {}
        for ci, c in enumerate(self.conditions):
            if c is None:
                continue
            for site in c.sites:
                for layer in c.layer_list(model.info.n_layers):
                    where.setdefault((site, c.stage, layer), []).append(ci)
        self.fwd_hooks: list[tuple[str, Any]] = []
        # RoPE tables of this pass, per layer, where a condition places a rotated mean
        self._tables: dict[int, list[Tensor | None]] = {
            layer: [None, None] for ci, c in enumerate(self.conditions) if c is not None and c.replace == "rotated_mean"
            for layer in c.layer_list(model.info.n_layers)}
        for layer in self._tables:
            for t, name in enumerate(table_hooks(layer)):
                self.fwd_hooks.append((name, self._table_hook(layer, t)))
        for (site, stage, layer), cis in where.items():
            name, heads_first = model.hook_name(site, stage, layer)
            self.fwd_hooks.append((name, self._make_hook(site, stage, layer, heads_first, cis)))
        self.fwd_hooks.append((model.end_hook, self._end_of_forward))
        self._router = RowRouter(len(self.conditions))
        self._accountant = Accountant()
        # one condition: ready for plain forward passes; several: set_batch must say which row has which
        self.set_batch(None if len(self.conditions) == 1 else torch.zeros(0, dtype=torch.long))

    # ------------------------------------------------------------------ batch state
    def set_batch(
        self,
        row_condition: Int[Tensor, " batch"] | None,
        prompt_mask: Bool[Tensor, "batch pos"] | None = None,
        full_mask: Bool[Tensor, "batch pos"] | None = None,
        row_ids: Int[Tensor, " batch"] | None = None,
    ) -> None:
        """Describe the next batch.

        Args:
            row_condition: Index into ``conditions`` per row; -1 for an undisturbed row.
                ``None``: every row carries the only condition, every position is the
                prompt, and every forward pass is a fresh prompt (the :func:`disrupt` mode).
            prompt_mask: True at the prompt's tokens, where statistics are taken and the
                disruption applies (``None``: every position).
            full_mask: True at every real token (prompt + scored answer). Answer positions
                are disrupted only under ``kv_cache="every_step"``. ``None``: ``prompt_mask``.
            row_ids: Stable id per row (the example's id) seeding the random controls, so
                results do not depend on batching; default ``0..batch-1``.

        After ``set_batch`` with a ``row_condition``, the first forward pass is the prompt
        (prefill) and later ones are cached decode steps of a generation: rows under
        ``"every_step"`` get the prompt's replacement there, other rows are left alone.
        """
        self._router.describe(row_condition, prompt_mask, full_mask, row_ids)
        self._prefill = True
        self._cache: dict[tuple, tuple[Tensor, Tensor]] = {}
        self._new_pass()
        self.passes = 0  # forward passes completed (end hook reached) since set_batch
        self.last_changed = self.last_selected = torch.zeros(0, dtype=torch.long)
        self.last_removed = self.last_removed_energy = torch.zeros(0, dtype=torch.float64)
        self.prompt_selected = torch.zeros(0, dtype=torch.long)  # last_selected of the prompt pass

    def _new_pass(self) -> None:
        """Reset the per-pass state (counters are allocated by the first hook of the pass)."""
        self._seen: set[tuple] = set()
        for tables in self._tables.values():
            tables[:] = [None, None]
        self._accountant.reset()

    @contextlib.contextmanager
    def active(self) -> Iterator[Intervention]:
        """Context in which the model's forward passes carry these hooks."""
        with self.model.hooks(self.fwd_hooks):
            yield self

    # --------------------------------------------------------------------- hooks
    def _make_hook(self, site: str, stage: str, layer: int, heads_first: bool, cis: list[int]):
        n_heads = self.model.info.n_heads if site == "q" else self.model.info.n_kv_heads

        def hook(x: Tensor, hook: Any) -> Tensor:
            y = to_heads(x, heads_first, n_heads)  # [b, pos, head, d]
            self._enter((site, stage, layer), y)
            out = y.clone()
            for ci in cis:
                rows = self._router.rows(ci, y.shape[0]).to(y.device)
                if len(rows):
                    self._disrupt(ci, site, stage, layer, y, rows, out)
            return from_heads(out, x, heads_first)

        return hook

    def _table_hook(self, layer: int, t: int):
        def hook(x: Tensor, hook: Any) -> None:
            self._tables[layer][t] = x  # read by this layer's post-RoPE hooks; cleared at the end of the pass

        return hook

    def _rotation(self, layer: int, rows: Tensor) -> Rotation:
        cos, sin = self._tables[layer]
        if cos is None or sin is None:
            raise DisruptionError(f"layer {layer}'s RoPE tables ({', '.join(table_hooks(layer))}) did not fire before "
                                  "its post-RoPE Q/K in this pass, so a rotated mean cannot be placed")
        return Rotation(cos, sin, self.model.rope.layout).rows(rows)

    def _enter(self, here: tuple[str, str, int], y: Tensor) -> None:
        """Checks at a disrupting hook: each fires once per pass; no one-token prompt; counters ready."""
        if here in self._seen:
            raise RuntimeError(
                f"hook {here} fired twice without reaching {self.model.end_hook}: a forward pass stopped "
                "early (stop_at_layer?), so the no-op check could not run; Intervention needs "
                "complete forward passes"
            )
        self._seen.add(here)
        if self._router.row_condition is None and y.shape[1] == 1:
            raise DisruptionError(
                "a one-token forward pass in disrupt()/to_hooks() mode: per-prompt statistics of "
                "one token are meaningless, and during cached generation each decode step would "
                "be disrupted as a new prompt. To generate, describe the prompt with "
                "Intervention.set_batch(row_condition, prompt_mask) (see evaluate.generate_exact)"
            )
        if not self._accountant.started:  # first hook of a pass: per-row counters, kept on its device
            self._router.check_rows(y.shape[0])
            self._accountant.start(y.shape[0], y.device)

    def _disrupt(self, ci: int, site: str, stage: str, layer: int, y: Tensor, rows: Tensor, out: Tensor) -> None:
        """Condition ``ci`` on its rows of one site: select (prompt pass) or reuse (decode step), replace, count."""
        c, key, yr = self.conditions[ci], (ci, site, stage, layer), y[rows]  # yr: [r, pos, head, d]
        rotation = self._rotation(layer, rows) if c.replace == "rotated_mean" else None
        if self._prefill:
            stat, apply = self._router.masks(c, rows, y.shape[1], y.device)
            sel, value = select(c, yr, stat, site=site, stage=stage, layer=layer, seeds=self._router.seeds(rows),
                                pair=self._pair, calibration=self.calibration, rotation=rotation)
            self._cache[key] = (sel, value)
        elif c.kv_cache == "every_step":  # cached decode step: new tokens only
            sel, value = self._cache[key]
            apply = torch.ones(yr.shape[:2], dtype=torch.bool, device=y.device)
        else:
            return
        placed = value[:, None] if rotation is None else rotation.apply(value)  # a rotated mean: this pass's positions
        new = torch.where(apply[:, :, None, None] & sel[:, None], placed.to(y.dtype), yr)
        self._accountant.count(rows, changed=(new != yr).flatten(1).sum(1),
                               selected=sel.flatten(1).sum(1) if self._prefill else None)
        if self._prefill:
            self._accountant.account(rows, yr, new, stat, apply)
        out[rows] = new

    def _end_of_forward(self, x: Tensor, hook: Any) -> None:
        expected = [ci for ci, c in enumerate(self.conditions)
                    if c is not None and (self._prefill or c.kv_cache == "every_step")]
        b = x.shape[0]
        changed, selected, removed = self._accountant.totals(b)
        if self._prefill:  # decode steps keep the prompt's account
            self.last_removed, self.prompt_selected = removed, selected
            self.last_removed_energy = self._accountant.energy_share(b)
        self.last_changed, self.last_selected = changed, selected
        self.passes += 1
        # After set_batch(row_condition=...), later passes are cached decode steps; in the
        # unmasked mode every pass is a fresh prompt.
        was_prefill, self._prefill = self._prefill, self._router.row_condition is None
        self._new_pass()  # before any raise: the next pass starts clean
        check_changed(self.conditions, expected, self._router, b, changed, selected, prefill=was_prefill)


@contextlib.contextmanager
def disrupt(
    model: LoadedModel, disruption: Disruption, calibration: QKVStats | None = None
) -> Iterator[Intervention]:
    """Apply ``disruption`` to every row and token of the forward passes inside the block.

    For inputs without padding; for padded batches call ``set_batch`` on the yielded
    :class:`Intervention` with the masks.

    >>> import massmech as mm
    >>> model = mm.load_model("tiny-llama")
    >>> with torch.inference_mode(), disrupt(model, Disruption(rule="topk", k=2)) as iv:
    ...     model.forward(torch.tensor([[5, 6, 7, 8]]))
    >>> iv.last_selected.tolist(), round(float(iv.last_removed[0]), 2)
    ([24], 0.27)
    """
    iv = Intervention(model, [disruption], calibration=calibration)
    with iv.active():
        yield iv
