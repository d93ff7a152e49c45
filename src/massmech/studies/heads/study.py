"""The retrieval-heads study: rank heads on some examples, replace Q's massive pairs in the top ones
or in as many others, score other examples.

Per task (one cell each): :func:`~massmech.causal.retrieval.rank_heads` ranks every head by the
needle advantage its massive RoPE pairs carry at the answer position, on ``n_rank`` examples; only
heads whose Q has a λ-massive dim on most of those prompts are eligible (a Q disruption elsewhere
replaces nothing). Then, on ``n`` other examples, Q's massive pairs (λ rule on each prompt's M,
whole pairs, the prompt mean, before RoPE, prompt only) are replaced in the ``top`` heads (arm
``top``) or in ``top`` other eligible heads drawn at random (arms ``other-0`` ...: a control matched
in head count; ``removed_variance`` is reported beside it). The comparison per task: the control
draws' mean accuracy minus the top arm's, with a paired bootstrap interval over examples
(Bonferroni over the tasks), and the top arm against the baseline (exact McNemar).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from massmech import plotting
from massmech.causal.disruption import Disruption
from massmech.causal.evaluate import evaluate
from massmech.causal.retrieval import rank_heads
from massmech.causal.tasks.builtin import get_task
from massmech.core.models import LoadedModel
from massmech.errors import AnalysisError
from massmech.infra.cells import Cell
from massmech.infra.study import CellSpec, Context, run_with_model, unit_cells
from massmech.stats import bootstrap_ci, evaluable, mcnemar_exact, wilson_ci
from massmech.studies.heads import SPEC
from massmech.studies.heads.config import HeadsConfig

RANKING = "ranking.parquet"  # per task, layer and head: score, eligibility, rank, arm
COMPARISON = "comparison.parquet"  # per task: the top arm against the control draws and the baseline
EXAMPLES = "examples.parquet"  # per task, condition and example: correct, n_dims, removed_variance
COLUMNS = ["model", "task", "condition", "accuracy", "ci_low", "ci_high", "n", "n_dims", "removed_variance"]


def q_pairs(lam: float, units: Sequence[tuple[int, int]]) -> Disruption:
    """The disruption of an arm: Q's λ-massive pairs before RoPE, in ``units`` only.

    >>> q_pairs(5.0, [(3, 1)]).label()
    'q.pre.lam5.U3:1.pair'
    """
    return Disruption(target="q", stage="pre", rule="lambda", lam=lam, granularity="pair", units=units)


def head_arms(ranking: pd.DataFrame, top: int, draws: int, seed: int) -> dict[str, list[tuple[int, int]]]:
    """The ``top`` eligible heads by rank, and ``draws`` seeded draws of ``top`` other eligible heads.

    Raises:
        AnalysisError: Fewer than ``2 * top`` eligible heads.

    >>> r = pd.DataFrame(dict(layer=[0, 0, 1, 1], head=[0, 1, 0, 1], eligible=True, rank=[1, 2, 3, 4]))
    >>> head_arms(r, 1, 2, seed=0)["top"]
    [(0, 0)]
    """
    eligible = ranking[ranking.eligible]
    if len(eligible) < 2 * top:
        raise AnalysisError(f"{len(eligible)} heads have a λ-massive Q dim on most ranking prompts; the top {top} and "
                            f"as many others need {2 * top}: lower top (--top)")
    best = eligible.sort_values("rank").head(top)
    rest = eligible.drop(best.index)
    rng = np.random.default_rng(seed)
    arms = {"top": [(int(a), int(b)) for a, b in zip(best["layer"], best["head"], strict=True)]}
    for i in range(draws):
        pick = rest.iloc[np.sort(rng.choice(len(rest), top, replace=False))]
        arms[f"other-{i}"] = [(int(a), int(b)) for a, b in zip(pick["layer"], pick["head"], strict=True)]
    return arms


def compare(examples: pd.DataFrame, chance: float, alpha: float) -> dict:
    """The top arm against the control draws (paired bootstrap over examples) and the baseline (exact McNemar).

    >>> ex = pd.DataFrame(dict(condition=["baseline", "top", "other-0"] * 2, uid=[0, 0, 0, 1, 1, 1],
    ...                        correct=[True, False, True, True, True, True]))
    >>> c = compare(ex, 0.0, 0.05)
    >>> c["top"], c["others"], c["difference"]
    (0.5, 1.0, 0.5)
    """
    wide = examples.pivot_table(index="uid", columns="condition", values="correct", aggfunc="first").astype(float)
    others = wide[[c for c in wide.columns if c.startswith("other-")]]
    diff = others.mean(1) - wide["top"]
    lo, hi = bootstrap_ci(diff.to_numpy(), alpha=alpha, seed=0)
    b, c, p = mcnemar_exact(wide["top"].to_numpy(), wide["baseline"].to_numpy())
    n, k = len(wide), int(wide["baseline"].sum())
    return {"n": n, "baseline": k / n, "top": float(wide["top"].mean()), "others": float(others.to_numpy().mean()),
            "difference": float(diff.mean()), "ci_low": lo, "ci_high": hi, "level": 1 - alpha,
            "top_vs_baseline_discordant": [b, c], "top_vs_baseline_p": p, "chance": chance,
            "evaluable": evaluable(k, n, chance)}


class HeadsStudy:
    """The study (:mod:`massmech.infra.study`): one cell per task (see the module docstring)."""

    name = SPEC.name
    version = SPEC.version

    def plan(self, cfg: HeadsConfig, ctx: Context) -> list[CellSpec]:
        ctx.model(cfg.model).rope  # noqa: B018 - a model without RoPE: its clear error before any folder
        return unit_cells(self, cfg.model, cfg.tasks, lambda task: {
            "model": ctx.model_id(cfg.model), "task": get_task(task).config(), "n": cfg.n, "seed": cfg.seed,
            "n_rank": cfg.n_rank, "rank_seed": cfg.rank_seed, "top": cfg.top, "draws": cfg.draws, "lam": cfg.lam})

    def run_unit(self, cfg: HeadsConfig, cells: Sequence[CellSpec], ctx: Context) -> dict:
        model, out = ctx.model(cfg.model), {}
        for cell in cells:
            task = get_task(cell.payload)
            ranking = rank_heads(model, task, n=cfg.n_rank, seed=cfg.rank_seed, lam=cfg.lam)
            try:
                arms = head_arms(ranking, cfg.top, cfg.draws, cfg.seed)
            except AnalysisError as err:  # too few heads with massive Q dims: a finding, kept as the cell
                out[cell.key] = ({"task": task.name, "error": str(err)}, {"ranking": ranking.assign(task=task.name, role="")})
                continue
            role = {u: arm for arm, units in arms.items() for u in units}
            ranking["role"] = [role.get((int(a), int(b)), "") for a, b in zip(ranking["layer"], ranking["head"], strict=True)]
            seen = {e.prompt for e in task.examples(cfg.n_rank, cfg.rank_seed)}
            examples = [e for e in task.examples(cfg.n, cfg.seed) if e.prompt not in seen]
            conditions = {"baseline": None, **{arm: q_pairs(cfg.lam, units) for arm, units in arms.items()}}
            df = evaluate(model, examples, conditions, scoring=task.scoring, batch_size=cfg.batch_size, progress=False)
            df = df[["condition", "uid", "correct", "n_dims", "removed_variance"]].assign(task=task.name)
            data = {"task": task.name, "arms": arms, "chance": task.chance(cfg.n, cfg.seed), "scored": len(examples)}
            out[cell.key] = (data, {"ranking": ranking.assign(task=task.name), "examples": df})
        return out

    def consolidate(self, cfg: HeadsConfig, cells: dict[str, Cell]) -> pd.DataFrame:
        rows = []
        for cell in cells.values():
            if "error" in cell.data:
                continue
            for cond, g in cell.tables["examples"].groupby("condition", sort=False):
                k, n = int(g.correct.sum()), len(g)
                lo, hi = wilson_ci(k, n)
                rows.append({"model": cfg.model, "task": cell.data["task"], "condition": cond, "accuracy": k / n,
                             "ci_low": lo, "ci_high": hi, "n": n, "n_dims": float(g.n_dims.mean()),
                             "removed_variance": float(g.removed_variance.mean())})
        return pd.DataFrame(rows, columns=COLUMNS)

    def finish(self, cfg: HeadsConfig, table: pd.DataFrame, out: Path, ctx: Context) -> dict:
        cells = list(ctx.cells.values())
        alpha = 0.05 / len(cells)  # Bonferroni over the tasks
        comparison = pd.DataFrame([{"task": c.data["task"], "error": None, **compare(c.tables["examples"], c.data["chance"], alpha)}
                                   if "error" not in c.data else {"task": c.data["task"], "error": c.data["error"], "evaluable": False}
                                   for c in cells])
        comparison.to_parquet(out / COMPARISON, index=False)
        pd.concat([c.tables["ranking"] for c in cells], ignore_index=True).to_parquet(out / RANKING, index=False)
        ran = [c for c in cells if "error" not in c.data]
        pd.concat([c.tables["examples"] for c in ran] or [pd.DataFrame()], ignore_index=True).to_parquet(out / EXAMPLES, index=False)
        for c in ran:
            task = c.data["task"]
            plotting.heads_figure(c.tables["ranking"], table[table.task == task], task=task, model=cfg.model,
                                  out=out / "figures" / f"heads_{task}")
        plotting.close_all()
        return {"model": cfg.model, "arms": {c.data["task"]: c.data["arms"] for c in ran},
                "comparison": comparison.to_dict("records")}


HEADS = HeadsStudy()


def run_heads(config: HeadsConfig, out: str | os.PathLike, *, model: LoadedModel | None = None, executor: Any = None,
              cells: str | os.PathLike | None = None, load_options: dict | None = None, overwrite: bool = False,
              progress: bool = True) -> pd.DataFrame:
    """Run (or resume) :class:`HeadsConfig` into ``out/``; returns the accuracy table.

    Writes ``results.parquet``/``.csv`` (per task and condition: accuracy with its Wilson interval,
    n, mean replaced cells and removed variance), ``comparison.parquet`` (per task: the top arm
    against the control draws and the baseline), ``ranking.parquet``, ``examples.parquet``,
    ``figures/heads_<task>`` (PDF + PNG), ``summary.json`` and ``manifest.json``.

    Args:
        model: A model already loaded (the manifest names it).
        executor: Who computes the cells (see :func:`massmech.infra.study.run_study`).
        cells: A shared cell store (default ``out/cells``).
        load_options: How the model is loaded (``dtype``, ``device``, ``device_map``).
        overwrite: Replace the results of a run of another config in ``out``.
        progress: Progress bars.
    """
    return run_with_model(HEADS, config, out, model=model, executor=executor, cells=cells, load_options=load_options,
                          overwrite=overwrite, progress=progress)
