"""The band-attribution study: one cell per task, then per layer which RoPE bands carry each edge.

Each cell runs :func:`massmech.causal.retrieval.edge_attribution` on ``n`` examples of one task:
at the last prompt position, every head's attention logit split by RoPE pair (exact: the pairs
sum to the model's own ``hook_attn_scores``), then into the needle advantage (the prompt tokens
spelling the answer vs the others) and the sink advantage (the first token vs the rest), grouped
by band and by massive pairs. ``finish`` pools them per task, edge, group and layer
(:func:`~massmech.causal.retrieval.summarize_edges`) and draws a layer x band heat map per task.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from massmech import plotting
from massmech.causal.retrieval import edge_attribution, summarize_edges
from massmech.causal.tasks.builtin import get_task
from massmech.core.models import LoadedModel
from massmech.errors import ConfigError
from massmech.infra.cells import Cell
from massmech.infra.study import CellSpec, Context, run_with_model, unit_cells
from massmech.studies.attribute import SPEC
from massmech.studies.attribute.config import AttributeConfig

BANDS = "bands.parquet"  # per task, edge, grouping, group and layer: mean advantage, total, share, pairs


class AttributeStudy:
    """The study (:mod:`massmech.infra.study`): one cell per task (see the module docstring)."""

    name = SPEC.name
    version = SPEC.version

    def plan(self, cfg: AttributeConfig, ctx: Context) -> list[CellSpec]:
        model = ctx.model(cfg.model)
        _ = model.rope  # a model without RoPE: its clear error before any folder
        if cfg.layers and max(cfg.layers) >= model.info.n_layers:
            raise ConfigError(f"layers {cfg.layers} out of range: {model.info.name} has {model.info.n_layers}")
        return unit_cells(self, cfg.model, cfg.tasks, lambda task: {
            "model": ctx.model_id(cfg.model), "task": get_task(task).config(), "n": cfg.n, "seed": cfg.seed,
            "lam": cfg.lam, "layers": list(cfg.layers)})

    def run_unit(self, cfg: AttributeConfig, cells: Sequence[CellSpec], ctx: Context) -> dict:
        model, out = ctx.model(cfg.model), {}
        for cell in cells:
            task = get_task(cell.payload)
            df = edge_attribution(model, task, n=cfg.n, seed=cfg.seed, layers=list(cfg.layers) or None, lam=cfg.lam,
                                  progress=False)
            out[cell.key] = ({"task": task.name, "examples": int(df.uid.nunique()) if len(df) else 0},
                             {"edges": df.assign(task=task.name)})
        return out

    def consolidate(self, cfg: AttributeConfig, cells: dict[str, Cell]) -> pd.DataFrame:
        return pd.concat([c.tables["edges"] for c in cells.values()], ignore_index=True).assign(model=cfg.model)

    def finish(self, cfg: AttributeConfig, table: pd.DataFrame, out: Path, ctx: Context) -> dict:
        bands = pd.concat([summarize_edges(g).assign(task=task) for task, g in table.groupby("task", sort=False)],
                          ignore_index=True)
        bands.to_parquet(out / BANDS, index=False)
        pooled = {}
        for task, g in table.groupby("task", sort=False):
            plotting.band_heatmap(bands[bands.task == task], task=task, model=cfg.model,
                                  out=out / "figures" / f"attribution_{task}")
            adv = g.groupby(["edge", "grouping", "group"], sort=False).advantage.mean()
            total = g.drop_duplicates(["uid", "layer", "head", "edge"]).groupby("edge", sort=False).total.mean()
            pooled[task] = {edge: {"total": round(float(t), 4),
                                   "groups": {f"{grp}={name}": round(float(adv[edge, grp, name]), 4)
                                              for (e, grp, name) in adv.index if e == edge}}
                            for edge, t in total.items()}
        plotting.close_all()
        return {"model": cfg.model, "n": cfg.n, "tasks": list(cfg.tasks), "layers": int(table.layer.nunique()),
                "examples": {c.data["task"]: c.data["examples"] for c in ctx.cells.values()},
                "advantage": pooled}


ATTRIBUTE = AttributeStudy()


def run_attribute(config: AttributeConfig, out: str | os.PathLike, *, model: LoadedModel | None = None,
                  executor: Any = None, cells: str | os.PathLike | None = None, load_options: dict | None = None,
                  overwrite: bool = False, progress: bool = True) -> pd.DataFrame:
    """Run (or resume) :class:`AttributeConfig` into ``out/``; returns the per-example table.

    Writes ``results.parquet``/``.csv`` (per task, example, layer, head, edge, grouping and group: the
    logit ``advantage`` the group carries and the edge's ``total``, see
    :func:`~massmech.causal.retrieval.edge_attribution`), ``bands.parquet`` (pooled per layer),
    ``figures/attribution_<task>`` (PDF + PNG), ``summary.json`` (per task and edge, the mean total
    advantage and the part of it each group carries, over examples, layers and heads) and ``manifest.json``.

    Args:
        model: A model already loaded (the manifest names it).
        executor: Who computes the cells (see :func:`massmech.infra.study.run_study`).
        cells: A shared cell store (default ``out/cells``).
        load_options: How the model is loaded (``dtype``, ``device``, ``device_map``).
        overwrite: Replace the results of a run of another config in ``out``.
        progress: Progress bars.

    >>> import tempfile, massmech as mm
    >>> from massmech.studies.attribute.config import AttributeConfig
    >>> out = tempfile.mkdtemp()
    >>> df = run_attribute(AttributeConfig(model="tiny-llama", tasks=("passkey",), n=2), out, progress=False)
    >>> sorted(df.edge.unique()), sorted(p.name for p in (Path(out) / "figures").glob("*.png"))
    (['needle', 'sink'], ['attribution_passkey.png'])
    """
    return run_with_model(ATTRIBUTE, config, out, model=model, executor=executor, cells=cells, load_options=load_options,
                          overwrite=overwrite, progress=progress)
