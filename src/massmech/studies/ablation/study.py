"""Ablation sweeps: a grid of disruptions x tasks x models -> one tidy, resumable results table.

A *cell* is one (model, task, condition) evaluated on ``n`` seeded examples. Each finished cell
goes at once into the study's :class:`~massmech.infra.cells.CellStore` (``cells/ablation/<key>/``,
atomically) with its per-example verdicts; ``results.parquet`` is built from the cells (atomically) when
the sweep ends, and rebuilt by every rerun. Rerunning the same sweep skips finished cells;
killing it loses only the cells in flight and never duplicates one, because a cell's key hashes
everything that defines it: the model, the task config, the examples themselves, the condition
and the study's schema version (cells of older code are recomputed, never reused).

All pending conditions of a (model, task) group share batched forward passes (conditions
folded into the batch, see :func:`massmech.causal.evaluate.evaluate`).

Conditions: the baseline; one *massive* disruption per point of the grid rule/lambda-or-k x
target x stage x layer range; and for each of those one disruption per control kind.
"""


from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from massmech.causal.disruption import Disruption
from massmech.causal.evaluate import BASELINE, score
from massmech.causal.klmatch import NEUTRAL_KL, neutral_kl_match
from massmech.causal.tasks.builtin import get_task
from massmech.core.capture import capture_stats
from massmech.core.corpus import calibration_split
from massmech.core.models import LoadedModel
from massmech.errors import DisruptionError, NoOpDisruptionError, TaskError
from massmech.infra.cells import cell_key, data_hash
from massmech.infra.study import CellSpec, Context, run_study
from massmech.studies.ablation import EXAMPLES, SPEC
from massmech.studies.ablation.config import SweepConfig
from massmech.studies.ablation.results import consolidate


def _cell_parts(model: str, task: dict, data: str, seed: int, cond: Disruption | None, calib: dict | None = None,
                scorer: dict | None = None) -> dict:
    parts = {"model": model, "task": task, "data": data, "seed": seed,
             "condition": None if cond is None else cond.to_dict()}
    if calib is not None:  # only calibration-based cells depend on the calibration corpus
        parts["calibration"] = calib
    if scorer is not None:  # a generating scorer; strict cells keep the keys they always had
        parts["scorer"] = scorer
    return parts


def _scorer(config: SweepConfig, scoring: str) -> dict | None:
    """The scorer part of a cell's key: ``None`` for the strict scorer and for choice tasks."""
    if config.scorer == "strict" or scoring == "choice":
        return None
    if config.scorer == "rank":  # generates nothing
        return {"scorer": "rank"}
    return {"scorer": config.scorer, "max_new_tokens": config.max_new_tokens}


class AblationStudy:
    """The sweep as a study (:mod:`massmech.infra.study`): one cell per (model, task, condition);
    the conditions of one (model, task) form a unit, evaluated in shared batched passes."""

    name = SPEC.name
    version = SPEC.version

    def plan(self, config: SweepConfig, ctx: Context) -> list[CellSpec]:
        cells: dict[str, CellSpec] = {}
        calib = _calibration_id(config)
        for spec in config.models:
            # layer ranges need the model's depth; "all" does not (a resumed sweep loads nothing)
            n_layers = ctx.model(spec).info.n_layers if set(config.layer_ranges) != {"all"} else None
            conds = config.disruptions(n_layers, ctx.model(spec).info.architecture if config.paper_settings else None)
            for tname in config.tasks:
                task = get_task(tname)
                n = min(config.n, task.max_n())
                examples = task.examples(n, config.seed)
                if config.scorer == "rank" and task.scoring == "exact":
                    task.distractors(examples[0])  # a task without distractors is refused before any compute
                # the examples themselves enter the key: a changed prompt or dataset never reuses a cell
                data = data_hash(repr(examples))
                # the kl control: the matched one, scaled on this model to the massive condition's neutral KL
                kl = [("control", d, lr, True) for d, lr in conds if "kl" in config.controls and d.control is None]
                for role, d, lr, by_kl in [(BASELINE, None, "all", False)] + [(_role(d), d, lr, False) for d, lr in conds] + kl:
                    needs = d is not None and (d.selection == "calibration" or d.replace == "calib_mean")
                    parts = _cell_parts(ctx.model_id(spec), task.config(), data, config.seed,
                                        d.as_control("matched") if by_kl else d, calib if needs else None,
                                        _scorer(config, task.scoring))
                    if by_kl:
                        parts["kl_match"] = NEUTRAL_KL
                    key = cell_key(self.name, parts, version=self.version)
                    # the same cell twice in the grid (e.g. layer ranges that coincide) is one cell
                    cells.setdefault(key, CellSpec(key, parts, group=spec, unit=tname,
                                                   payload={"task": tname, "n": n, "role": role, "disruption": d,
                                                            "layer_range": lr, "kl": by_kl}))
        return list(cells.values())

    def run_unit(self, config: SweepConfig, cells, ctx: Context) -> dict:
        spec, tname, n = cells[0].group, cells[0].payload["task"], cells[0].payload["n"]
        model = ctx.model(spec)
        calibration = ctx.cached(("calibration", spec), lambda: _calibration(model, config)) if _needs_calibration(config) else None
        task = get_task(tname)
        # each kl control's match, found once per model and massive condition (the same for every task)
        found, unmatched = {}, {}
        conditions = {c.key: c.payload["disruption"] for c in cells}
        for c in (c for c in cells if c.payload.get("kl")):
            d = c.payload["disruption"]
            conditions[c.key] = d.as_control("matched")  # what it would have been scaled from
            try:
                found[c.key] = ctx.cached(("kl", spec, json.dumps(d.to_dict(), sort_keys=True)),
                                          lambda d=d: neutral_kl_match(model, d, seed=config.seed))
                conditions[c.key] = found[c.key].control
            except (DisruptionError, NoOpDisruptionError) as err:  # e.g. too few dims to draw the control from
                unmatched[c.key] = f"no KL-matched control: {err}"

        def run(chosen: list) -> pd.DataFrame:
            torch.manual_seed(config.seed)
            return score(model, task, {c.key: conditions[c.key] for c in chosen}, scorer=config.scorer,
                         max_new_tokens=config.max_new_tokens, n=n, seed=config.seed, batch_size=config.batch_size,
                         calibration=calibration, progress=False)

        runnable = [c for c in cells if c.key not in unmatched]
        df, errors = _each_that_runs(run, runnable) if runnable else (pd.DataFrame(columns=_EVALUATED), {})
        errors |= unmatched
        chance = task.chance(n, config.seed, scorer=config.scorer)
        out = {}
        for c in cells:
            g, d = df[df.condition == c.key], conditions[c.key]
            out[c.key] = ({
                "key": c.key, "model": spec, "task": tname, "kind": task.kind, "scoring": task.scoring,
                "task_config": task.config(), "n": int(len(g)), "seed": config.seed,
                "condition": BASELINE if d is None else d.label(), "role": c.payload["role"],
                "layer_range": c.payload["layer_range"], "disruption": None if d is None else d.to_dict(),
                "n_dims": float(g.n_dims.mean()) if len(g) else None,
                "removed_variance": float(g.removed_variance.mean()) if len(g) else None,
                "chance": chance, "error": errors.get(c.key),
                **({"scorer": used["scorer"]} if (used := _scorer(config, task.scoring)) else {}),
                **({"control_kind": "kl", "kl_match": found[c.key].row() if c.key in found else None}
                   if c.payload.get("kl") else {}),
                "verdicts": {str(u): bool(v) for u, v in zip(g.uid, g.correct, strict=True)},
            }, {})
        return out

    def consolidate(self, config: SweepConfig, cells: dict) -> pd.DataFrame:
        return consolidate([cell.data for cell in cells.values()])

    def finish(self, config: SweepConfig, table: pd.DataFrame, out: Path, ctx: Context) -> dict:
        examples_table(ctx.cells).to_parquet(out / EXAMPLES, index=False)  # each example's verdict, in the run
        failed = table[table.error.notna()]
        return {"study": self.name, "cells": len(table), "models": list(config.models), "tasks": list(config.tasks),
                "n_asked": config.n,
                "conditions": int(table.condition.nunique()),
                "failed": [{"model": r.model, "task": r.task, "condition": r.condition, "error": r.error}
                           for r in failed.itertuples()]}


ABLATION = AblationStudy()


def examples_table(cells: dict) -> pd.DataFrame:
    """One row per (cell, example): what a paired test or bootstrap over examples needs.

    >>> class C:
    ...     data = {"model": "m", "task": "t", "condition": "baseline", "key": "k1", "verdicts": {"3": True}}
    >>> examples_table({"k1": C()}).to_dict("records")
    [{'model': 'm', 'task': 't', 'condition': 'baseline', 'key': 'k1', 'uid': '3', 'correct': True}]
    """
    rows = [{"model": c.data["model"], "task": c.data["task"], "condition": c.data["condition"], "key": key,
             "uid": uid, "correct": bool(v)} for key, c in cells.items() for uid, v in c.data["verdicts"].items()]
    return pd.DataFrame(rows, columns=["model", "task", "condition", "key", "uid", "correct"])


def run_sweep(
    config: SweepConfig,
    out: str | os.PathLike,
    *,
    cells: str | os.PathLike | None = None,
    executor: Any = None,
    load_options: dict | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> pd.DataFrame:
    """Run (or resume) a sweep into ``out/``; returns the results table.

    Writes ``out/results.parquet`` and ``.csv`` (one row per model x task x condition: accuracy,
    CI, n, paired difference to the baseline), ``out/summary.json`` and ``out/manifest.json``.
    Finished cells are never recomputed.

    Args:
        cells: A cell store (default ``out/cells``). Sweeps that share it share their common
            cells (e.g. the baseline), whatever their grids.
        executor: ``"serial"`` (default), ``"processes"``, ``"ray"`` or an executor object
            (:mod:`massmech.infra.executors`).
        load_options: How workers load the models (:func:`~massmech.core.loading.load_model`'s
            ``dtype``, ``device``, ``device_map``); a dtype other than float32 gets cells of its own.
        overwrite: ``out`` holds a sweep of another config: replace its results (refused otherwise,
            before any work; a second process writing ``out`` is refused while this one runs).
    """
    return run_study(ABLATION, config, out, executor=executor, cells=cells, progress=progress,
                     ctx=Context(load_options=load_options), overwrite=overwrite, kinds=SPEC.aliases)


_EVALUATED = ["condition", "uid", "group", "correct", "pred", "n_dims", "removed_variance", "logprobs", "margin",
              "scorer"]  # evaluate()'s table


def _each_that_runs(run: Any, cells: list) -> tuple[pd.DataFrame, dict[str, str]]:
    """All conditions of a unit in shared passes; if one cannot run on this model (a control with
    too few dims, a rule that selects nothing), each alone, recording why the others failed; if
    the task itself cannot (a prompt longer than the model's context), every cell records why."""
    try:
        return run(cells), {}
    except TaskError as err:  # the task cannot run on this model (a prompt longer than its context): no cell can
        return pd.DataFrame(columns=_EVALUATED), {c.key: str(err) for c in cells}
    except (DisruptionError, NoOpDisruptionError):
        frames, errors = [], {}
        for c in cells:
            try:
                frames.append(run([c]))
            except (DisruptionError, NoOpDisruptionError) as err:
                errors[c.key] = str(err)
        return (pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=_EVALUATED)), errors


def _role(d: Disruption) -> str:
    return "massive" if d.control is None else "control"


def _needs_calibration(config: SweepConfig) -> bool:
    return config.selection == "calibration" or config.replace == "calib_mean"


_CALIB_SEQ_LEN = 256


def _calibration_id(config: SweepConfig) -> dict:
    """What the calibration statistics depend on (part of the key of calibration-based cells)."""
    return {"corpus": "bbc_news", "split": "calibration_split", "tokens": config.calib_tokens,
            "seq_len": _CALIB_SEQ_LEN, "seed": config.seed}


def _calibration(model: LoadedModel, config: SweepConfig):
    windows, _ = calibration_split(model, calib_tokens=config.calib_tokens, seq_len=_CALIB_SEQ_LEN, seed=config.seed)
    return capture_stats(model, windows, sites=("q", "k"), progress=False)


