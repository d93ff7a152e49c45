"""The position-shift study: one cell per shift, then the bands compared layer by layer.

Each cell runs :func:`massmech.core.shift.shift_changes` on every text for one prefix length; the
texts are the first ``seq_len`` tokens of BBC articles and the prefix the first article after
them (unrelated news text, the same for every text). The table keeps the sums per text, so
:func:`~massmech.core.shift.relative_changes` pools them exactly and the ledger (P9) reads them.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from tqdm.auto import tqdm

from massmech import plotting
from massmech.core.corpus import bbc_news
from massmech.core.models import LoadedModel
from massmech.core.shift import relative_changes, shift_changes, slow_band_least
from massmech.errors import ConfigError, CorpusError
from massmech.infra.cells import Cell, cell_key, data_hash
from massmech.infra.study import CellSpec, Context, run_with_model
from massmech.studies.analyze.study import weights_fingerprint
from massmech.studies.shift import SPEC
from massmech.studies.shift.config import ShiftConfig

CHANGES = "changes.parquet"  # relative change per shift, layer, measure and band
SLOW = "slow_least.parquet"  # per shift, measure and layer: is the slowest third's change the least?


@dataclasses.dataclass(frozen=True)
class ShiftData:
    """The texts, the prefix and the leading special tokens of a run."""

    lead: list[int]
    texts: list[list[int]]
    prefix: list[int]


def shift_data(model: LoadedModel, cfg: ShiftConfig) -> ShiftData:
    """The first ``seq_len`` tokens of the first ``n_texts`` articles long enough, and the next one's as prefix.

    Raises:
        CorpusError: Too few articles of ``seq_len`` (and ``max(shifts)``) tokens.
    """
    if cfg.seq_len + max(cfg.shifts) + 2 > model.info.n_ctx:
        raise ConfigError(f"seq_len + max(shifts) = {cfg.seq_len + max(cfg.shifts)} exceeds {model.info.name}'s "
                          f"context {model.info.n_ctx}")
    lead = model.tokenize("")[0]
    texts: list[list[int]] = []
    articles = bbc_news(seed=cfg.seed)
    for start in range(0, len(articles), 64):
        for ids in model.tokenize(articles[start : start + 64]):
            body = ids[len(lead):] if ids[: len(lead)] == lead else ids
            if len(texts) < cfg.n_texts and len(body) >= cfg.seq_len:
                texts.append(body[: cfg.seq_len])
            elif len(texts) == cfg.n_texts and len(body) >= max(cfg.shifts):
                return ShiftData(lead, texts, body[: max(cfg.shifts)])
    raise CorpusError(f"BBC news has too few articles of {cfg.seq_len} tokens for n_texts={cfg.n_texts} and a "
                      f"prefix of {max(cfg.shifts)}: lower n_texts, seq_len or the shifts")


class ShiftStudy:
    """The study (:mod:`massmech.infra.study`): one cell per shift (see the module docstring)."""

    name = SPEC.name
    version = SPEC.version

    def plan(self, cfg: ShiftConfig, ctx: Context) -> list[CellSpec]:
        model = ctx.model(cfg.model)
        _ = model.rope  # a model without RoPE: a clear error before any folder
        data = self.data(cfg, ctx)
        common = {"model": ctx.model_id(cfg.model),
                  "weights": ctx.cached(("weights", cfg.model), lambda: weights_fingerprint(model)),
                  "texts": data_hash([data.lead, data.texts]), "skip": cfg.skip}
        cells = []
        for shift in cfg.shifts:
            parts = common | {"prefix": data_hash(data.prefix[:shift]), "shift": shift}
            cells.append(CellSpec(cell_key(self.name, parts, version=self.version), parts, group=cfg.model,
                                  unit=f"shift{shift}", payload=shift))
        return cells

    @staticmethod
    def data(cfg: ShiftConfig, ctx: Context) -> ShiftData:
        return ctx.cached(("shift-data", cfg.model, cfg.n_texts, cfg.seq_len, max(cfg.shifts), cfg.seed),
                          lambda: shift_data(ctx.model(cfg.model), cfg))

    def run_unit(self, cfg: ShiftConfig, cells: Sequence[CellSpec], ctx: Context) -> dict:
        model, data = ctx.model(cfg.model), self.data(cfg, ctx)
        out = {}
        for cell in cells:
            parts = []
            for lo in tqdm(range(0, len(data.texts), cfg.batch_size), desc=f"shift {cell.payload}", leave=False):
                ids = torch.tensor(data.texts[lo : lo + cfg.batch_size])
                parts.append(shift_changes(model, ids, data.prefix[: cell.payload], lead=data.lead, skip=cfg.skip,
                                           examples=range(lo, lo + len(ids))))
            table = pd.concat(parts, ignore_index=True).assign(shift=cell.payload)
            out[cell.key] = ({"shift": cell.payload, "n_texts": len(data.texts)}, {"changes": table})
        return out

    def consolidate(self, cfg: ShiftConfig, cells: dict[str, Cell]) -> pd.DataFrame:
        return pd.concat([c.tables["changes"] for c in cells.values()], ignore_index=True).assign(model=cfg.model)

    def finish(self, cfg: ShiftConfig, table: pd.DataFrame, out: Path, ctx: Context) -> dict:
        rel = relative_changes(table, by=["shift"])
        slow = slow_band_least(rel, by=["shift"])
        rel.to_parquet(out / CHANGES, index=False)
        slow.to_parquet(out / SLOW, index=False)
        plotting.shift_curve(rel.assign(model=cfg.model), out=out / "figures" / "shift")
        plotting.close_all()
        share = slow.groupby(["shift", "measure"]).slow_least.mean()
        return {"model": cfg.model, "n_texts": cfg.n_texts, "seq_len": cfg.seq_len, "shifts": list(cfg.shifts),
                "slow_least_share": {f"{m}@{s}": round(float(v), 4) for (s, m), v in share.items()}}


SHIFT = ShiftStudy()


def run_shift(config: ShiftConfig, out: str | os.PathLike, *, model: LoadedModel | None = None, executor: Any = None,
              cells: str | os.PathLike | None = None, load_options: dict | None = None, overwrite: bool = False,
              progress: bool = True) -> pd.DataFrame:
    """Run (or resume) :class:`ShiftConfig` into ``out/``; returns the per-text table.

    Writes ``results.parquet``/``.csv`` (per text, shift, layer, measure and band: ``change`` and
    ``base`` sums, see :mod:`massmech.core.shift`), ``changes.parquet`` (their ratio pooled over
    the texts), ``slow_least.parquet`` (per shift, measure and layer: whether the slowest third
    changed least), ``figures/shift`` (PDF + PNG), ``summary.json`` and ``manifest.json``.

    Args:
        model: A model already loaded (the manifest names it).
        executor: Who computes the cells (see :func:`massmech.infra.study.run_study`).
        cells: A shared cell store (default ``out/cells``).
        load_options: How the model is loaded (``dtype``, ``device``, ``device_map``).
        overwrite: Replace the results of a run of another config in ``out``.
        progress: Progress bars.
    """
    return run_with_model(SHIFT, config, out, model=model, executor=executor, cells=cells, load_options=load_options,
                          overwrite=overwrite, progress=progress)
