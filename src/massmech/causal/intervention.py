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

from massmech.causal.controls import counter_uniform, matched_dims, pooled_values
from massmech.causal.disruption import Disruption
from massmech.core.detect import massive_mask
from massmech.core.frequency import equal_count_bands
from massmech.core.models import LoadedModel
from massmech.core.qkvstats import QKVStats
from massmech.core.sites import from_heads, to_heads
from massmech.errors import DisruptionError, NoOpDisruptionError


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
    the disrupted positions. Under mean replacement that is exactly the share of token variance
    the disruption removed; a control that replaces more dims of smaller variance can remove as
    much (see ``control="matched"``).

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
        info = model.info
        self._pair = None
        if model.rope_or_none is not None:
            self._pair = torch.as_tensor(model.rope.dim_to_pair())
        # (site, stage, layer) -> condition indices acting there
        self._where: dict[tuple[str, str, int], list[int]] = {}
        for ci, c in enumerate(self.conditions):
            if c is None:
                continue
            for site in c.sites:
                for layer in c.layers if c.layers is not None else range(info.n_layers):
                    self._where.setdefault((site, c.stage, layer), []).append(ci)
        self.fwd_hooks: list[tuple[str, Any]] = []
        for (site, stage, layer), cis in self._where.items():
            name, heads_first = model.hook_name(site, stage, layer)
            self.fwd_hooks.append((name, self._make_hook(site, stage, layer, heads_first, cis)))
        self.fwd_hooks.append((self.model.end_hook, self._end_of_forward))
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
        if row_condition is None:
            if len(self.conditions) != 1 or prompt_mask is not None or full_mask is not None:
                raise DisruptionError("row_condition=None needs exactly one condition and no masks")
            self.row_condition = None
        else:
            self.row_condition = row_condition.long().cpu()
            b = len(self.row_condition)
            for name, t in (("prompt_mask", prompt_mask), ("full_mask", full_mask), ("row_ids", row_ids)):
                if t is not None and len(t) != b:
                    raise DisruptionError(f"{name} has {len(t)} rows, row_condition {b}")
            for ci in self.row_condition.unique().tolist():
                if not -1 <= ci < len(self.conditions):
                    raise DisruptionError(f"row condition {ci} out of range for {len(self.conditions)} conditions")
        self.prompt_mask = None if prompt_mask is None else prompt_mask.bool()
        self.full_mask = self.prompt_mask if full_mask is None else full_mask.bool()
        if self.prompt_mask is not None:
            if self.full_mask.shape != self.prompt_mask.shape:
                raise DisruptionError(f"full_mask {tuple(self.full_mask.shape)} and prompt_mask {tuple(self.prompt_mask.shape)} differ in shape")
            if (self.prompt_mask & ~self.full_mask).any():
                raise DisruptionError("prompt_mask marks positions that full_mask does not: the prompt must be part of the sequence")
            empty = (~self.prompt_mask.any(1)).nonzero().flatten()
            if len(empty):
                raise DisruptionError(f"rows {empty.tolist()[:8]} have no prompt token: statistics need at least one")
        self._row_ids = None if row_ids is None else row_ids.long().cpu()
        self._prefill = True
        self._cache: dict[tuple, tuple[Tensor, Tensor]] = {}
        self._new_pass()
        self.passes = 0  # forward passes completed (end hook reached) since set_batch
        self.last_changed = self.last_selected = torch.zeros(0, dtype=torch.long)
        self.last_removed = torch.zeros(0, dtype=torch.float64)

    def _new_pass(self) -> None:
        """Reset the per-pass state (counters are allocated by the first hook of the pass)."""
        self._seen: set[tuple] = set()
        self.changed = torch.zeros(0, dtype=torch.long)
        self.n_selected = torch.zeros(0, dtype=torch.long)
        self.removed = torch.zeros(0, dtype=torch.float64)  # squared change of replaced values
        self.variance = torch.zeros(0, dtype=torch.float64)  # token variance of the disrupted sites

    def _rows(self, ci: int, b: int, device: torch.device) -> Tensor:
        """Rows of a ``b``-row forward pass that carry condition ``ci``."""
        if len(self.changed) == 0:  # first hook of a pass: per-row counters, kept on its device
            if self.row_condition is not None and len(self.row_condition) != b:
                raise DisruptionError(
                    f"set_batch described {len(self.row_condition)} rows, the forward pass has {b}: "
                    "call set_batch(row_condition, ...) before each batch"
                )
            self.changed = torch.zeros(b, dtype=torch.long, device=device)
            self.n_selected = torch.zeros(b, dtype=torch.long, device=device)
            self.removed = torch.zeros(b, dtype=torch.float64, device=device)
            self.variance = torch.zeros(b, dtype=torch.float64, device=device)
        return self._condition_rows(ci, b).to(device)

    def _condition_rows(self, ci: int, b: int) -> Tensor:
        if self.row_condition is None:
            return torch.arange(b)
        return (self.row_condition == ci).nonzero().flatten()

    @contextlib.contextmanager
    def active(self) -> Iterator[Intervention]:
        """Context in which the model's forward passes carry these hooks."""
        with self.model.hooks(self.fwd_hooks):
            yield self

    # ----------------------------------------------------------------- selection
    def _select(
        self, c: Disruption, site: str, stage: str, layer: int, x: Tensor, mask: Tensor, rows: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Dims to replace ``[r, head, d]`` and their replacement values ``[r, head, d]``."""
        r, _, n_heads, d_head = x.shape
        w = mask[..., None, None].float()  # [r, pos, 1, 1]
        count = w.sum(1).clamp_min(1.0)  # [r, 1, 1]
        xf = x.float() * w
        if c.selection == "prompt":
            m = (xf * xf).sum(1).sqrt()  # [r, head, d]: the paper's M over the prompt
        else:
            li = self.calibration.layers.index(layer)
            m = self.calibration.norm(site, stage)[li].float().to(x.device).expand(r, n_heads, d_head)
        if c.rule in ("lambda", "topk"):
            sel = massive_mask(m, rule=c.rule, lam=c.lam, k=c.k)
        else:
            sel = torch.zeros_like(m, dtype=torch.bool)
            sel[..., list(c.dims)] = True
        if c.heads is not None:
            keep = torch.zeros(n_heads, dtype=torch.bool)
            keep[list(c.heads)] = True
            sel &= keep.view(1, -1, 1).to(sel.device)
        means = xf.sum(1) / count  # [r, head, d]: each dim's prompt mean
        if c.replace == "mean":
            value = means
        elif c.replace == "zero":
            value = torch.zeros_like(m)
        elif c.replace == "pooled_mean":
            value = pooled_values(means, sel)
        else:
            li = self.calibration.layers.index(layer)
            value = self.calibration.mean(site, stage)[li].float().to(x.device).expand(r, n_heads, d_head)
        if c.control is not None:
            # what replacing each dim would remove over the prompt ([r, head, d]), for size-matched controls
            removed = ((x.float() - value[:, None]) ** 2 * w).sum(1) if c.control == "matched" else None
            pooled = ((xf * xf).sum(1), means, count) if c.replace == "pooled_mean" else None
            sel = self._control(c, site, layer, m, sel, rows, removed, pooled)
            if c.replace == "pooled_mean":  # the control's own pooled scalar, as the official code's control
                value = pooled_values(means, sel)
        return sel, value

    def _control(
        self, c: Disruption, site: str, layer: int, m: Tensor, sel: Tensor, rows: Tensor, removed: Tensor | None,
        pooled: tuple[Tensor, Tensor, Tensor] | None = None,
    ) -> Tensor:
        """Same count per head as ``sel`` (or, ``"matched"``, the same removed variance), among allowed dims."""
        n = sel.sum(-1, keepdim=True)  # [r, head, 1]
        if c.control == "matched":
            ids = rows.cpu() if self._row_ids is None else self._row_ids[rows.cpu()]
            key = counter_uniform(c.seed, ids, layer, site, tuple(m.shape[1:])).to(m.device)
            return matched_dims(key, removed, sel, pooled=pooled)
        if c.control == "lowest":
            key = m.double()
        else:
            ids = rows.cpu() if self._row_ids is None else self._row_ids[rows.cpu()]
            key = counter_uniform(c.seed, ids, layer, site, tuple(m.shape[1:])).to(m.device)
        allowed = ~sel
        if c.control.startswith("band"):
            band = equal_count_bands(int(self._pair.max()) + 1, 3)
            in_band = torch.as_tensor(
                [p >= 0 and band[p] == c.control.removeprefix("band-") for p in self._pair.tolist()]
            )
            allowed &= in_band.to(m.device).view(1, 1, -1)
        short = allowed.sum(-1, keepdim=True) < n  # [r, head, 1]
        if short.any():
            r, h, _ = short.nonzero()[0].tolist()
            raise DisruptionError(
                f"control {c.control!r} can pick only {int(allowed[r, h].sum())} dims in layer {layer} "
                f"{site}-head {h}, where the rule selected {int(n[r, h, 0])}: use another control or "
                "select fewer dims (smaller k, larger lam)"
            )
        key = key.masked_fill(~allowed, float("inf"))
        rank = torch.argsort(torch.argsort(key, dim=-1, stable=True), dim=-1, stable=True)
        return rank < n

    # --------------------------------------------------------------------- hooks
    def _make_hook(self, site: str, stage: str, layer: int, heads_first: bool, cis: list[int]):
        n_heads = self.model.info.n_heads if site == "q" else self.model.info.n_kv_heads
        def hook(x: Tensor, hook: Any) -> Tensor:
            y = to_heads(x, heads_first, n_heads)  # [b, pos, head, d]
            here = (site, stage, layer)
            if here in self._seen:
                raise RuntimeError(
                    f"hook {here} fired twice without reaching {self.model.end_hook}: a forward pass stopped "
                    "early (stop_at_layer?), so the no-op check could not run; Intervention needs "
                    "complete forward passes"
                )
            self._seen.add(here)
            if self.row_condition is None and y.shape[1] == 1:
                raise DisruptionError(
                    "a one-token forward pass in disrupt()/to_hooks() mode: per-prompt statistics of "
                    "one token are meaningless, and during cached generation each decode step would "
                    "be disrupted as a new prompt. To generate, describe the prompt with "
                    "Intervention.set_batch(row_condition, prompt_mask) (see evaluate.generate_exact)"
                )
            out = y.clone()
            for ci in cis:
                rows = self._rows(ci, y.shape[0], y.device)
                if len(rows) == 0:
                    continue
                c = self.conditions[ci]
                key = (ci, site, stage, layer)
                yr = y[rows]  # [r, pos, head, d]
                if self._prefill:
                    if self.prompt_mask is None:
                        stat = torch.ones(yr.shape[:2], dtype=torch.bool, device=y.device)
                        apply = stat
                    else:
                        if self.prompt_mask.shape[1] != y.shape[1]:
                            raise DisruptionError(
                                f"prompt_mask has {self.prompt_mask.shape[1]} positions, the "
                                f"forward pass {y.shape[1]}: call set_batch for this batch"
                            )
                        stat = self.prompt_mask.to(y.device)[rows]
                        full = self.full_mask.to(y.device)[rows]
                        apply = full if c.kv_cache == "every_step" else stat
                    sel, value = self._select(c, site, stage, layer, yr, stat, rows)
                    self._cache[key] = (sel, value)
                    self.n_selected[rows.to(self.n_selected.device)] += sel.flatten(1).sum(1).to(self.n_selected.device)
                elif c.kv_cache == "every_step":  # cached decode step: new tokens only
                    sel, value = self._cache[key]
                    apply = torch.ones(yr.shape[:2], dtype=torch.bool, device=y.device)
                else:
                    continue
                where = apply[:, :, None, None] & sel[:, None]  # [r, pos, head, d]
                new = torch.where(where, value[:, None].to(y.dtype), yr)
                self.changed[rows.to(self.changed.device)] += (new != yr).flatten(1).sum(1).to(self.changed.device)
                if self._prefill:
                    self._account(yr, new, stat, apply, rows)
                out[rows] = new
            return from_heads(out, x, heads_first)

        return hook

    def _account(self, yr: Tensor, new: Tensor, stat: Tensor, apply: Tensor, rows: Tensor) -> None:
        """Add the rows' removed squared change and their token variance at the applied positions (fp32)."""
        w = stat[..., None, None].float()
        mean = (yr.float() * w).sum(1, keepdim=True) / w.sum(1, keepdim=True).clamp_min(1.0)
        a = apply[..., None, None].float()
        variance = (((yr.float() - mean) ** 2) * a).flatten(1).sum(1)
        removed = (((new.float() - yr.float()) ** 2) * a).flatten(1).sum(1)
        dev = self.removed.device
        self.removed[rows.to(dev)] += removed.double().to(dev)
        self.variance[rows.to(dev)] += variance.double().to(dev)

    def _end_of_forward(self, x: Tensor, hook: Any) -> None:
        expected = [
            ci for ci, c in enumerate(self.conditions)
            if c is not None and (self._prefill or c.kv_cache == "every_step")
        ]
        b = x.shape[0]
        ran = len(self.changed) == b  # False if no disruption hook ran in this pass
        changed = self.changed.cpu() if ran else torch.zeros(b, dtype=torch.long)
        selected = self.n_selected.cpu() if ran else torch.zeros(b, dtype=torch.long)
        if self._prefill:  # decode steps keep the prompt's account
            self.last_removed = (
                (self.removed.cpu() / self.variance.cpu().clamp_min(1e-30)).where(self.variance.cpu() > 0, 0.0)
                if ran else torch.zeros(b, dtype=torch.float64)
            )
        self.last_changed, self.last_selected = changed, selected
        self.passes += 1
        # After set_batch(row_condition=...), later passes are cached decode steps; in the
        # unmasked mode every pass is a fresh prompt.
        was_prefill, self._prefill = self._prefill, self.row_condition is None
        self._new_pass()  # before any raise: the next pass starts clean
        for ci in expected:
            rows = self._condition_rows(ci, b)
            idle = rows[changed[rows] == 0]
            if len(idle):
                c = self.conditions[ci]
                where = (
                    f"rows {idle.tolist()[:8]} of this batch" if self._row_ids is None
                    else f"examples (uid) {self._row_ids[idle].tolist()[:8]}"
                )
                raise NoOpDisruptionError(
                    f"disruption {c.label()} changed no activation of {where} "
                    f"in this {'forward pass' if was_prefill else 'decode step'}"
                    + (
                        f": the {c.rule} rule selected no dim (lower lam, or use rule='topk')"
                        if selected[idle].sum() == 0
                        else ": every replaced value equalled the original (a mean over a single "
                        "token?)"
                    )
                )


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
