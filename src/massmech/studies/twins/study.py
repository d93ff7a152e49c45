"""The twins study: train (or resume) the twins, then measure where massive values come from.

For every variant and checkpoint, on held-out BBC text (:func:`checkpoint_tables`):

* per (site, layer): the largest and mean per-head ratio ``max_d M / mean_d M`` of Q, K, V
  (pre-RoPE), the count of massive dims under the lambda rule, the slow-half energy share, the
  peak pair (pairs indexed as the RoPE twin's) and, for RoPE variants, the peak pair's wavelength
  and the energy-weighted geometric mean wavelength, both relative to the training context;
* natural-text loss and in-context accuracy (``repeat``, ``kv``, ``passkey``) with 95% CIs.

At the final checkpoint of the RoPE twin (:func:`~massmech.studies.twins.measures.disruption_table`): the same metrics with its
top-``k`` Q/K dims per head replaced by their mean over the sequence, and with ``k`` random
non-selected dims per head (the control). :func:`run_twins` writes it all, plus figures and a
summary and ``checkpoints.json`` (variant -> step -> checkpoint folder, each with its own
``manifest.json``), to ``OUT/analysis`` (replaced atomically); the checkpoints stay in
``OUT/checkpoints``.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from massmech.core.rope import RopeSpec
from massmech.core.twin import load_twin
from massmech.errors import RunNotFoundError, TwinError
from massmech.files.io import write_json
from massmech.infra.cells import Cell, cell_key
from massmech.infra.study import CellSpec, Context, compute_cells, run_study, store_of
from massmech.studies.twins import SPEC
from massmech.studies.twins.config import TwinsConfig
from massmech.studies.twins.measures import (
    analyse_checkpoint,
    checkpoint_id,
    disruption_table,
    eval_sets,
    summary_ratios,
    wavelength_table,
    wrap_twin,
)
from massmech.studies.twins.seeds import matched_accuracy, seed_table
from massmech.studies.twins.train import (
    checkpoint_dirs,
    log_table,
    prepare,
    read_log,
    resolve_device,
    train_variant,
)


class TwinsStudy:
    """The twins as a study (:mod:`massmech.infra.study`), in one cell store.

    Two kinds of cells: *training* (one per variant, its own unit and group, so any executor
    trains variants in parallel; the cell records that the variant reached its last step, the
    weights and the log live in its checkpoints, from which training resumes) and *checkpoint
    analysis* (one per (variant, step), keyed by the checkpoint's weights: a retrained checkpoint
    is another cell). The plan grows as training ends: a variant's checkpoints are planned once
    its last one exists. ``run_study`` plans again until nothing new appears. The run folder
    (``ctx.out``) holds the tokenizer, ``config.json`` and the checkpoints.
    """

    name = SPEC.name
    version = SPEC.version

    def train_cells(self, cfg: TwinsConfig, variants: Sequence[str] | None = None) -> list[CellSpec]:
        shared = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("variants", "preset")}
        cells = []
        for v in cfg.variants if variants is None else [cfg.variant(n) for n in variants]:
            parts = {"config": shared, "variant": v.name}
            cells.append(CellSpec(cell_key(self.name, parts, version=self.version), parts, group=v.name, unit=v.name,
                                  payload=("train", v.name)))
        return cells

    def checkpoint_cells(self, cfg: TwinsConfig, out: Path) -> list[CellSpec]:
        # the weights' hash carries the training; of the config, drop what only shapes the training schedule
        shared = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("steps", "checkpoints", "variants", "preset")}
        cells = []
        for v in cfg.variants:
            found = checkpoint_dirs(out, v)
            if cfg.steps not in found:  # still training: planned once its last checkpoint exists
                continue
            for step, folder in sorted(found.items()):
                parts = {"config": shared, "variant": v.name, "step": step, "weights": checkpoint_id(folder)}
                cells.append(CellSpec(cell_key(self.name, parts, version=self.version), parts, group=v.name,
                                      unit=f"{v.name}@{step}", payload=("checkpoint", v.name, step, str(folder))))
        return cells

    def plan(self, cfg: TwinsConfig, ctx: Context) -> list[CellSpec]:
        ctx.cached("prepared", lambda: prepare(cfg, ctx.out))  # tokenizer and checks, before any worker starts
        return self.train_cells(cfg) + self.checkpoint_cells(cfg, ctx.out)

    def run_unit(self, cfg: TwinsConfig, cells: Sequence[CellSpec], ctx: Context) -> dict:
        out, device = ctx.out, resolve_device(ctx.load_options.get("device"))
        made = {}
        for c in cells:
            if c.payload[0] == "train":
                log = train_variant(cfg, c.payload[1], out, device=device, progress=False)
                made[c.key] = ({"variant": c.payload[1], "steps": len(log)}, {})
            else:
                made[c.key] = self._analyse(cfg, c, ctx, device)
        return made

    def _analyse(self, cfg: TwinsConfig, c: CellSpec, ctx: Context, device: str) -> tuple[dict, dict]:
        out = ctx.out
        tok, corpus = ctx.cached("prepared", lambda: prepare(cfg, out))

        def spec_of_twin() -> RopeSpec:  # non-RoPE twins are indexed by the RoPE twin's pairs
            def read() -> RopeSpec:
                rope = next(v for v in cfg.variants if v.is_twin and v.mechanism == "rope")
                found = checkpoint_dirs(out, rope)
                return wrap_twin(load_twin(found[min(found)]).eval(), tok, "twin-rope").rope

            return ctx.cached("twin spec", read)

        _, name, step, folder = c.payload
        v = cfg.variant(name)
        sets = ctx.cached(("sets", cfg.context_of(v)), lambda: eval_sets(cfg, corpus, cfg.context_of(v)))
        return {"variant": name, "step": step}, analyse_checkpoint(cfg, v, step, Path(folder), tok, sets, spec_of_twin,
                                                                    device)

    def consolidate(self, cfg: TwinsConfig, cells: dict[str, Cell]) -> dict[str, pd.DataFrame]:
        analysed = [c for c in cells.values() if "step" in c.data]
        return {name: pd.concat([c.tables[name] for c in analysed], ignore_index=True)
                for name in ("trajectory", "bands", "scores")}

    def finish(self, cfg: TwinsConfig, tables: dict[str, pd.DataFrame], out: Path, ctx: Context) -> dict:
        return _write_analysis(cfg, tables, out / "analysis", ctx)


TWINS_STUDY = TwinsStudy()


class _Only:
    """One kind of the twins' cells as a study of its own (same store, same keys): training only, or
    the checkpoint analyses only."""

    def __init__(self, which: str, variants: Sequence[str] | None = None) -> None:
        self.which, self.variants = which, variants
        self.name, self.version = TWINS_STUDY.name, TWINS_STUDY.version

    def plan(self, cfg: TwinsConfig, ctx: Context) -> list[CellSpec]:
        ctx.cached("prepared", lambda: prepare(cfg, ctx.out))
        if self.which == "train":
            return TWINS_STUDY.train_cells(cfg, self.variants)
        return TWINS_STUDY.checkpoint_cells(cfg, ctx.out)

    def run_unit(self, cfg: TwinsConfig, cells: Sequence[CellSpec], ctx: Context) -> dict:
        return TWINS_STUDY.run_unit(cfg, cells, ctx)

    def consolidate(self, cfg: TwinsConfig, cells: dict[str, Cell]) -> dict[str, pd.DataFrame]:
        return TWINS_STUDY.consolidate(cfg, cells)

    def finish(self, cfg: TwinsConfig, tables: dict[str, pd.DataFrame], out: Path, ctx: Context) -> dict:
        return TWINS_STUDY.finish(cfg, tables, out, ctx)


def train_all(
    cfg: TwinsConfig,
    out: str | os.PathLike,
    *,
    workers: int = 1,
    variants: Sequence[str] | None = None,
    device: str | None = None,
    executor: Any = None,
    progress: bool = True,
) -> dict[str, list[dict]]:
    """Train every variant (resuming each from its last checkpoint), through an executor: the
    training cells of the twins study alone (a rerun skips variants that reached their last step).

    Args:
        workers: With no ``executor``: variants trained in parallel in local processes
            (:class:`~massmech.infra.executors.ProcessExecutor`, cores ÷ workers threads each).
        executor: ``"serial"``, ``"processes"``, ``"ray"`` or an executor object (one variant per
            Ray worker; with ``device="cuda"`` each asks for one GPU).

    Returns:
        Variant name -> training log.
    """
    from massmech.infra.executors import ProcessExecutor

    out = Path(out)
    prepare(cfg, out)  # tokenizer and checks once, before any worker starts
    names = [v.name for v in cfg.variants] if variants is None else list(variants)
    if executor is None:
        executor = ProcessExecutor(workers=workers) if workers > 1 and len(names) > 1 else "serial"
    ctx = Context(load_options={"device": resolve_device(device)}, out=out)
    store = store_of(TWINS_STUDY, out / "cells")
    for c in TWINS_STUDY.train_cells(cfg, names):  # a training cell without its checkpoints: tampered with
        v = cfg.variant(c.payload[1])
        if c.key in store and not checkpoint_dirs(out, v):
            raise TwinError(f"{out}: the training of {v.name} is recorded in {store.folder / c.key} but its "
                            f"checkpoints are gone; remove that cell folder to retrain it")
    compute_cells(_Only("train", names), cfg, store, executor=executor, ctx=ctx, progress=progress)
    return {n: read_log(out, cfg.variant(n)) for n in names}


def checkpoint_tables(
    cfg: TwinsConfig,
    out: str | os.PathLike,
    *,
    device: str = "cpu",
    executor: Any = None,
    progress: bool = True,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Statistics and scores of every checkpoint of every trained variant (the checkpoint cells of
    the twins study alone): ``(trajectory, bands, scores)``, tidy, with ``variant`` and ``step``."""
    out = Path(out)
    ctx = Context(load_options={"device": device}, out=out)
    stored = compute_cells(_Only("checkpoints"), cfg, store_of(TWINS_STUDY, out / "cells"), executor=executor,
                           ctx=ctx, progress=progress)
    tables = TWINS_STUDY.consolidate(cfg, stored)
    return tables["trajectory"], tables["bands"], tables["scores"]


def _write_analysis(cfg: TwinsConfig, tables: dict[str, pd.DataFrame], where: Path, ctx: Context) -> dict:
    """The analysis on top of the cells: the RoPE twin's disruption, wavelengths, seeds, matched
    accuracy, the summary; tables (parquet + CSV), figures and ``checkpoints.json`` into ``where``."""
    from massmech import plotting

    out, device = ctx.out, resolve_device(ctx.load_options.get("device"))
    traj, bands, scores = tables["trajectory"], tables["bands"], tables["scores"]
    tok, corpus = ctx.cached("prepared", lambda: prepare(cfg, out))
    found = {v: checkpoint_dirs(out, v) for v in cfg.variants}
    rope_final = wrap_twin(load_twin(found[cfg.variant("rope")][cfg.steps]).to(device).eval(), tok, "twin-rope@final")
    disruption = disruption_table(cfg, rope_final, corpus)
    waves, seeds, matched = wavelength_table(traj, cfg), seed_table(traj, cfg), matched_accuracy(traj, scores, cfg)
    logs = {v.name: read_log(out, v) for v in cfg.variants}
    summary = _summary(cfg, traj, scores, disruption, waves, seeds, matched) | {"out": str(out)}
    written = {"trajectory": traj, "bands": bands, "scores": scores, "disruption": disruption, "wavelength": waves,
               "seeds": seeds.drop(columns="values"), "matched_accuracy": matched, "train_log": log_table(logs)}
    where.mkdir(parents=True, exist_ok=True)
    for name, t in written.items():
        t.to_parquet(where / f"{name}.parquet", index=False)
        t.to_csv(where / f"{name}.csv", index=False)
    plotting.twins_trajectory(traj, out=where / "twins_trajectory")
    plotting.twins_bands(bands, out=where / "twins_bands")
    plotting.twins_disruption(disruption, out=where / "twins_disruption")
    plotting.close_all()
    index = {v.name: {str(step): str(d.relative_to(out)) for step, d in sorted(found[v].items())} for v in cfg.variants}
    write_json(where / "checkpoints.json", index)  # variant -> step -> folder (each holds its own manifest.json)
    return summary


def _summary(cfg: TwinsConfig, traj: pd.DataFrame, scores: pd.DataFrame, disruption: pd.DataFrame,
             waves: pd.DataFrame, seeds: pd.DataFrame, matched: pd.DataFrame) -> dict:
    last = scores[scores.step == scores.groupby("variant").step.transform("max")]
    return {
        "preset": cfg.preset,
        "steps": cfg.steps,
        "twins": summary_ratios(traj, cfg),
        "seeds": {f"{r.mechanism}.{r.site}.{r.measure}": {"mean": round(r.mean, 4), "ci": [round(r.ci_low, 4), round(r.ci_high, 4)],
                                                          "n_seeds": r.n_seeds} for r in seeds.itertuples()},
        "matched_accuracy": {  # mechanism -> site -> mean over seeds of max/mean M, each twin at the common level
            "level": round(float(matched.level.iloc[0]), 4) if len(matched) else None,
            **{m: g.groupby("site").max_ratio.mean().round(4).to_dict() for m, g in matched.groupby("mechanism")},
        },
        "final_scores": {v: dict(zip(g.metric, g.value.round(4), strict=True)) for v, g in last.groupby("variant")},
        "wavelength": waves.groupby(["variant", "site"]).peak_wavelength_over_context.median().round(3)
        .unstack().to_dict(orient="index"),
        "disruption": {c: dict(zip(g.metric, g.value.round(4), strict=True)) for c, g in disruption.groupby("condition")},
        "disruption_delta": {
            c: {m: [round(x, 4) for x in row] for m, row in zip(g.metric, g[["delta", "delta_ci_low", "delta_ci_high"]].to_numpy().tolist(), strict=True)}
            for c, g in disruption[disruption.condition != "baseline"].groupby("condition")
        },
    }


def run_twins(
    cfg: TwinsConfig,
    out: str | os.PathLike,
    *,
    workers: int = 1,
    device: str | None = None,
    executor: Any = None,
    cells: str | os.PathLike | None = None,
    load_options: dict | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Train (resuming) every variant, analyse every checkpoint, write tables, figures, summary.

    Args:
        cfg: The study.
        out: The twins folder (checkpoints resumed, ``analysis/`` replaced).
        workers: With no ``executor``: variants trained in parallel (local processes).
        device: Default CUDA when available, else the CPU (or ``load_options["device"]``).
        executor: Who trains the variants and analyses the checkpoints not yet in the cell
            store (``"serial"`` default, ``"processes"``, ``"ray"``: one variant per worker,
            one GPU each on CUDA; see :mod:`massmech.infra.executors`).
        cells: A cell store (default ``out/cells``; the checkpoints stay in ``out``).
        load_options: ``{"device": ...}``, as the other studies take it.
        overwrite: Replace twins trained with another config in ``out`` (refused otherwise). A
            second process writing ``out`` is refused while this one runs.
        progress: Progress bars.

    Returns:
        The summary (also ``OUT/summary.json``): ``twins`` -> mechanism -> ``{"q", "k", "v"}``
        ratios, per-variant final scores, the wavelength table and the disruption result; the
        tables and figures are in ``OUT/analysis``.
    """
    from massmech.infra.executors import ProcessExecutor

    if executor is None:
        executor = ProcessExecutor(workers=workers) if workers > 1 else "serial"
    device = device or (load_options or {}).get("device")
    ctx = Context(load_options={"device": resolve_device(device)})
    if overwrite and Path(out).is_dir():
        prepare(cfg, out, overwrite=True)  # twins of another config: emptied of what massmech wrote there
    run_study(TWINS_STUDY, cfg, out, executor=executor, cells=cells, ctx=ctx, progress=progress, overwrite=overwrite)
    return json.loads((Path(out) / "summary.json").read_text())


def load_tables(out: str | os.PathLike) -> dict[str, pd.DataFrame]:
    """The tables of a finished twins run (``OUT/analysis/*.parquet``)."""
    d = Path(out) / "analysis"
    if not (Path(out) / "summary.json").is_file() or not d.is_dir():
        raise RunNotFoundError(f"{out} has no finished twins analysis: run massmech twins --out {out}")
    return {p.stem: pd.read_parquet(p) for p in sorted(d.glob("*.parquet"))}

