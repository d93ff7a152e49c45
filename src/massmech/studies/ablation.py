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
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from massmech.causal.disruption import CONTROLS, Disruption, paper_setting
from massmech.causal.evaluate import BASELINE, evaluate, summarize
from massmech.causal.tasks.base import Task
from massmech.causal.tasks.builtin import TASKS, get_task, is_task_name
from massmech.core.capture import capture_stats
from massmech.core.catalog import DEFAULT_MODEL
from massmech.core.corpus import calibration_split
from massmech.core.loading import load_model
from massmech.core.models import LoadedModel
from massmech.errors import ConfigError, DisruptionError
from massmech.infra.cells import cell_key, data_hash
from massmech.infra.io import write_json
from massmech.infra.runs import (
    atomic_run_dir,
    check_out,
    manifest,
)
from massmech.infra.study import CellSpec, Context, run_study
from massmech.stats import evaluable
from massmech.studies.ablation_results import consolidate

LAYER_RANGES = ("all", "early", "middle", "late")


def layer_range(spec: str, n_layers: int) -> tuple[int, ...] | None:
    """Layers of a named range: ``all`` (None), ``early``/``middle``/``late`` thirds, or ``"a-b"``."""
    if spec == "all":
        return None
    thirds = [round(i * n_layers / 3) for i in range(4)]
    if spec in ("early", "middle", "late"):
        i = ("early", "middle", "late").index(spec)
        return tuple(range(thirds[i], max(thirds[i + 1], thirds[i] + 1)))
    try:
        a, b = (int(x) for x in spec.split("-"))
    except ValueError as err:
        raise DisruptionError(f"layer range must be all, early, middle, late or 'a-b', got {spec!r}") from err
    if not 0 <= a <= b < n_layers:
        raise DisruptionError(f"layer range {spec!r} out of range: the model has {n_layers} layers")
    return tuple(range(a, b + 1))


@dataclass(frozen=True)
class SweepConfig:
    """A grid of ablations (see the module docstring).

    Attributes:
        models: Model specs.
        tasks: Task names (default parameters; see :mod:`massmech.causal.tasks.builtin`).
        n: Examples per task; tasks with less data use all they have (``n`` is recorded).
        rules: ``"lambda"`` and/or ``"topk"``.
        lams: Lambda values (rule ``lambda``).
        ks: k values (rule ``topk``).
        targets: Any of ``q``, ``k``, ``qk``.
        stages: ``pre`` and/or ``post``.
        layer_ranges: ``all``, ``early``, ``middle``, ``late`` or ``"a-b"``.
        controls: Control kinds evaluated next to each massive condition (default: random
            non-massive dims matched in removed variance, see :mod:`massmech.causal.disruption`).
        selection, replace, kv_cache: See :class:`~massmech.causal.intervention.Disruption`.
        calib_tokens: Corpus tokens for ``selection="calibration"`` / ``replace="calib_mean"``.
        seed: Seed of the examples and of the random controls.
        batch_size: Sequences per forward pass.
        paper_settings: Take k and the replacement from the official code's setting for each
            model's family (:func:`~massmech.causal.disruption.paper_setting`: Llama k=1 and Qwen2
            k=3 with one pooled mean per head, Gemma-2 k=22 set to zero); ``ks`` must then be
            empty. A model of any other family is refused before any cell runs.
    """

    models: Sequence[str] = (DEFAULT_MODEL,)
    tasks: Sequence[str] = tuple(TASKS)
    n: int = 100
    rules: Sequence[str] = ("lambda",)
    lams: Sequence[float] = (5.0,)
    ks: Sequence[int] = (4,)
    targets: Sequence[str] = ("qk",)
    stages: Sequence[str] = ("pre",)
    layer_ranges: Sequence[str] = ("all",)
    controls: Sequence[str] = ("matched",)
    selection: str = "prompt"
    replace: str = "mean"
    kv_cache: str = "prefill"
    calib_tokens: int = 4096
    seed: int = 0
    batch_size: int = 16
    paper_settings: bool = False

    def __post_init__(self) -> None:
        for name in ("models", "tasks", "rules", "lams", "ks", "targets", "stages", "layer_ranges", "controls"):
            v = getattr(self, name)
            object.__setattr__(self, name, tuple(v) if not isinstance(v, str) else (v,))
        for name in ("models", "tasks", "rules", "targets", "stages", "layer_ranges"):
            if not getattr(self, name):
                raise ConfigError(f"SweepConfig.{name} is empty")
        for t in self.tasks:
            if not is_task_name(t):
                raise ConfigError(f"unknown task {t!r}; tasks are {', '.join(TASKS)}")
        for c in self.controls:
            if c not in CONTROLS[1:]:
                raise ConfigError(f"unknown control {c!r}; controls are {CONTROLS[1:]}")
        if self.n < 1:
            raise ConfigError(f"n must be >= 1, got {self.n}")
        if any(r not in ("lambda", "topk") for r in self.rules):
            raise ConfigError(f"rules must be 'lambda' and/or 'topk', got {self.rules}")
        if self.paper_settings and (self.ks or self.rules != ("topk",) or self.replace != "pooled_mean"):
            raise ConfigError(
                f"paper_settings takes k and the replacement from each model's family, but ks={self.ks}, "
                f"rules={self.rules}, replace={self.replace!r}: leave ks empty with rules=('topk',) and "
                "replace='pooled_mean', or set paper_settings=False (--no-paper-settings) to choose them"
            )
        if ("lambda" in self.rules and not self.lams) or ("topk" in self.rules and not self.ks and not self.paper_settings):
            raise ConfigError("rule 'lambda' needs lams and rule 'topk' needs ks")
        for r in self.layer_ranges:
            if r not in LAYER_RANGES and "-" not in r:
                raise ConfigError(f"layer range must be one of {LAYER_RANGES} or 'a-b', got {r!r}")
        self.disruptions(None)  # every grid point is a valid disruption (raises otherwise)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> SweepConfig:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in json.loads(text).items()})

    def disruptions(self, n_layers: int | None, architecture: str | None = None) -> list[tuple[Disruption, str]]:
        """Every massive condition and its controls, as ``(disruption, layer range)``.

        ``n_layers=None`` leaves every disruption on all layers (to check the grid only). With
        ``paper_settings``, ``architecture`` (the model's) gives k and the replacements.
        """
        out = []
        ks, rep, lowest_rep = self.ks, self.replace, self.replace
        if self.paper_settings and architecture is not None:
            k, rep, lowest_rep = paper_setting(architecture)
            ks = (k,)
        points = [("lambda", lam, 4) for lam in self.lams if "lambda" in self.rules]
        points += [("topk", 5.0, k) for k in ks if "topk" in self.rules]
        for rule, lam, k in points:
            for target in self.targets:
                for stage in self.stages:
                    for lr in self.layer_ranges:
                        layers = None if n_layers is None else layer_range(lr, n_layers)
                        d = Disruption(
                            target=target, stage=stage, rule=rule, lam=lam, k=k, layers=layers,
                            selection=self.selection, replace=rep, kv_cache=self.kv_cache,
                            seed=self.seed,
                        )
                        out.append((d, lr))
                        out += [(replace(d.as_control(c), replace=lowest_rep) if c == "lowest" else d.as_control(c), lr)
                                for c in self.controls]
        return out


# The sweeps behind the paper figures and the analyses scripts (one definition, used by both).
FOCUS_TASKS = ("country_capital", "kv_lookup", "passkey")


def preset(name: str, models: tuple[str, ...] = (DEFAULT_MODEL,), n: int = 100, **overrides) -> SweepConfig:
    """A named sweep (every one also runs the variance-matched control):

    * ``main``: every task; baseline, lambda=5 pre-RoPE massive, and the matched, lowest-norm
      and count-matched random controls (massmech's lambda-rule variant);
    * ``paper``: the protocol of the paper's public code: post-RoPE Q and K, top-k per head with
      the official k and replacement of each model's family (``paper_settings``: k = 1 for
      Llama-family models such as SmolLM2 and 3 for Qwen2, one pooled scalar per head; k = 22 set
      to zero for Gemma-2), prompt only, decode steps untouched; the lowest-norm control and the
      variance-matched one. Other families (Gemma-3) have no official setting and are refused:
      pass ``paper_settings=False, ks=(K,), replace=...`` and name the variant;
    * ``k``: top-k rule, k = 1, 4, 16, three tasks; ``layers``: lambda=5 on all / early /
      middle / late layers, three tasks;
    * ``dose``: the dose-response: top-k, k = 1, 2, 4, 8, 16, against the matched control at
      each k, three tasks: accuracy against removed variance for both arms
      (:func:`massmech.report.plotting.dose_response`).
    """
    base = {
        "main": dict(tasks=tuple(TASKS), controls=("matched", "lowest", "random")),
        "paper": dict(tasks=tuple(TASKS), rules=("topk",), ks=(), paper_settings=True, stages=("post",),
                      replace="pooled_mean", kv_cache="prefill", controls=("lowest", "matched")),
        "k": dict(tasks=FOCUS_TASKS, rules=("topk",), ks=(1, 4, 16), controls=("matched", "lowest")),
        "layers": dict(tasks=FOCUS_TASKS, layer_ranges=("all", "early", "middle", "late"),
                       controls=("matched", "lowest")),
        "dose": dict(tasks=FOCUS_TASKS, rules=("topk",), ks=(1, 2, 4, 8, 16), controls=("matched",)),
    }
    if name not in base:
        raise ConfigError(f"unknown sweep preset {name!r}; presets are {', '.join(base)}")
    return SweepConfig(**(base[name] | {"models": tuple(models), "n": n} | overrides))


def _cell_parts(model: str, task: dict, data: str, seed: int, cond: Disruption | None, calib: dict | None = None) -> dict:
    parts = {"model": model, "task": task, "data": data, "seed": seed,
             "condition": None if cond is None else cond.to_dict()}
    if calib is not None:  # only calibration-based cells depend on the calibration corpus
        parts["calibration"] = calib
    return parts


class AblationStudy:
    """The sweep as a study (:mod:`massmech.infra.study`): one cell per (model, task, condition);
    the conditions of one (model, task) form a unit, evaluated in shared batched passes."""

    name = "ablation"
    kind = "sweep"

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
                # the examples themselves enter the key: a changed prompt or dataset never reuses a cell
                data = data_hash(repr(task.examples(n, config.seed)))
                for role, d, lr in [(BASELINE, None, "all")] + [(_role(d), d, lr) for d, lr in conds]:
                    needs = d is not None and (d.selection == "calibration" or d.replace == "calib_mean")
                    parts = _cell_parts(ctx.model_id(spec), task.config(), data, config.seed, d,
                                        calib if needs else None)
                    key = cell_key(self.name, parts)
                    # the same cell twice in the grid (e.g. layer ranges that coincide) is one cell
                    cells.setdefault(key, CellSpec(key, parts, group=spec, unit=tname,
                                                   payload={"task": tname, "n": n, "role": role, "disruption": d,
                                                            "layer_range": lr}))
        return list(cells.values())

    def run_unit(self, config: SweepConfig, cells, ctx: Context) -> dict:
        spec, tname, n = cells[0].group, cells[0].payload["task"], cells[0].payload["n"]
        model = ctx.model(spec)
        calibration = ctx.cached(("calibration", spec), lambda: _calibration(model, config)) if _needs_calibration(config) else None
        task = get_task(tname)
        torch.manual_seed(config.seed)
        df = evaluate(model, task, {c.key: c.payload["disruption"] for c in cells}, n=n, seed=config.seed,
                      batch_size=config.batch_size, calibration=calibration, progress=False)
        chance = task.chance(n, config.seed)
        out = {}
        for c in cells:
            g, d = df[df.condition == c.key], c.payload["disruption"]
            out[c.key] = ({
                "key": c.key, "model": spec, "task": tname, "kind": task.kind, "scoring": task.scoring,
                "task_config": task.config(), "n": int(len(g)), "seed": config.seed,
                "condition": BASELINE if d is None else d.label(), "role": c.payload["role"],
                "layer_range": c.payload["layer_range"], "disruption": None if d is None else d.to_dict(),
                "n_dims": float(g.n_dims.mean()), "removed_variance": float(g.removed_variance.mean()),
                "chance": chance,
                "verdicts": {str(u): bool(v) for u, v in zip(g.uid, g.correct, strict=True)},
            }, {})
        return out

    def consolidate(self, config: SweepConfig, cells: dict) -> pd.DataFrame:
        return consolidate([cell.data for cell in cells.values()])

    def finish(self, config: SweepConfig, table: pd.DataFrame, out: Path, ctx: Context) -> dict:
        return {"study": self.name, "cells": len(table), "models": list(config.models), "tasks": list(config.tasks),
                "conditions": int(table.condition.nunique())}


ABLATION = AblationStudy()


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
                     ctx=Context(load_options=load_options), overwrite=overwrite)


def _plain(x: Any, column: str) -> int | float | None:
    """A JSON value: ints for counts, ``None`` for a missing statistic (the baseline's p-value)."""
    if x is None or (isinstance(x, float) and x != x) or pd.isna(x):
        return None
    return int(x) if column in ("n", "b", "c") else float(x)


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


# ------------------------------------------------------------------------ one ablation
def ablate(
    model: str | LoadedModel,
    task: str | Task,
    *,
    n: int = 100,
    disruption: Disruption | None = None,
    control: str = "matched",
    seed: int = 0,
    batch_size: int = 16,
    task_params: dict | None = None,
    out: str | os.PathLike | None = None,
    overwrite: bool = False,
    progress: bool = False,
) -> dict:
    """Baseline vs massive-disrupted vs control accuracy on one task (the ``ablate`` CLI).

    Args:
        model: A spec or a loaded model.
        task: Task name (see :mod:`massmech.causal.tasks.builtin`), built with ``task_params`` (e.g.
            ``{"filler_repeats": 2}`` for a shorter passkey).
        n: Examples.
        disruption: The massive disruption (default: lambda rule, pre-RoPE Q and K, all layers).
        control: Control kind (default ``"matched"``: random non-massive dims removing as much
            token variance as the massive dims, per head; see :mod:`massmech.causal.disruption`).
        seed: Seed of the examples and of random controls.
        batch_size: Sequences per forward pass (results do not depend on it).
        out: Also write a run folder: ``ablate.json`` (this result), ``examples.parquet`` and
            ``.csv`` (one row per condition x example: ``condition, uid, group, correct, pred,
            n_dims``) and ``manifest.json``. It must be new, empty or (with ``overwrite``) a
            previous ablate run; checked before any work.
        overwrite: Replace a previous ablate run in ``out``.
        progress: Progress bar.

    Returns:
        ``{"baseline": {...}, "massive": {...}, "control": {...}, "model", "task", "condition",
        "control_kind", "protocol", "chance", "evaluable"}`` (``evaluable``: the baseline is
        clearly above chance, :func:`massmech.stats.evaluable`; if not, the task cannot show an
        effect on this model); each of the three is ``accuracy, ci_low, ci_high`` (Wilson),
        ``n``, ``n_dims`` (replaced cells per example), ``removed_variance`` (share of token
        variance removed, see :class:`~massmech.causal.intervention.Intervention`) and
        ``p_value``: the exact McNemar test against the baseline (``None`` for the baseline),
        with ``b, c`` (discordant pairs) and the paired difference ``delta, delta_ci_low,
        delta_ci_high`` (Newcombe) for the disrupted ones.

    Raises:
        TaskError: Unknown task, missing data package, or ``n`` beyond the data.
        DisruptionError: A disruption the model cannot take (k > d_head, missing site, ...).
    """
    t = task if isinstance(task, Task) else get_task(task, **(task_params or {}))
    t.examples(n, seed)  # n beyond the data: error before loading anything
    disruption = disruption or Disruption(seed=seed)
    if control not in CONTROLS[1:]:
        raise DisruptionError(f"unknown control {control!r}; controls are {CONTROLS[1:]}")
    if out is not None:
        check_out(out, "ablate", overwrite=overwrite)
    lm = load_model(model) if isinstance(model, str) else model
    disruption.validate(lm)
    conds = {BASELINE: None, "massive": disruption, "control": replace(disruption, control=control)}
    torch.manual_seed(seed)
    df = evaluate(lm, t, conds, n=n, seed=seed, batch_size=batch_size, progress=progress)
    s = summarize(df, seed=seed).set_index("condition")
    keep = ["accuracy", "ci_low", "ci_high", "n", "n_dims", "removed_variance", "p_value", "b", "c",
            "delta", "delta_ci_low", "delta_ci_high"]
    res = {name: {k: _plain(s.loc[name, k], k) for k in keep} for name in conds}
    for k in ("b", "c", "delta", "delta_ci_low", "delta_ci_high"):
        res[BASELINE].pop(k)
    res |= {
        "model": lm.info.name, "task": t.name, "task_config": t.config(), "kind": t.kind,
        "condition": disruption.label(), "control_kind": control, "seed": seed,
        "protocol": disruption.protocol(control),
    }
    chance = t.chance(n, seed)
    base = df[df.condition == BASELINE].correct
    res |= {"chance": chance, "evaluable": evaluable(int(base.sum()), len(base), chance)}
    if out is not None:
        config = {"model": lm.info.name, "task": t.name, "task_config": t.config(), "n": n, "seed": seed,
                  "disruption": disruption.to_dict(), "control": control, "batch_size": batch_size}
        with atomic_run_dir(out, "ablate", overwrite=overwrite) as tmp:
            write_json(tmp / "ablate.json", res)
            df.to_parquet(tmp / "examples.parquet", index=False)
            df.to_csv(tmp / "examples.csv", index=False)
            write_json(tmp / "manifest.json", manifest(config, model_info=lm.info_dict(), seed=seed))
    return res
