"""Every figure of the project, drawn from the ledger's run folders (:mod:`massmech.report.runs`).

Figures only *read* runs; :func:`make_figures` draws each one whose run exists, names every
missing run with the command that makes it, and never computes. ``massmech report --docs RUNS``
(and ``massmech reproduce``) call it, then put the figures in the docs' gallery.

>>> sorted(FIGURES)[:3]
['ablation', 'ablation_k', 'ablation_layers']
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from massmech import plotting
from massmech.report.runs import MODELS, command, models_of, run_folder


class MissingRun(Exception):
    """A figure's run folder is missing or unfinished (its message names the command that makes it)."""


def _run(root: Path, run: str, model: str) -> Path:
    path = root / run_folder(run, model)
    if not (path / "summary.json").is_file():
        raise MissingRun(f"{path} has no finished run: `{command(run, model, str(root))}` makes it")
    return path


def _table(root: Path, run: str, model: str) -> pd.DataFrame:
    return pd.read_parquet(_run(root, run, model) / "results.parquet")


def _analysis(root: Path, model: str) -> dict:
    from massmech import FrequencyAnalysis, QKVStats
    from massmech.core.emergence import Emergence
    from massmech.studies.analyze.config import default_layers

    run = _run(root, "analyze", model)
    stats = QKVStats.load(run / "stats.npz")
    config = json.loads((run / "manifest.json").read_text()).get("config", {})
    return {"stats": stats, "fa": FrequencyAnalysis.from_run(run), "bars": pd.read_parquet(run / "bars.parquet"),
            "layers": list(config.get("heatmap_layers") or default_layers(len(stats.layers))),
            "em": Emergence.from_layers(pd.read_parquet(run / "emergence.parquet"))}


def _twins(root: Path) -> dict[str, pd.DataFrame]:
    from massmech.studies.twins.study import load_tables

    return load_tables(_run(root, "twins", "toy twins"))


@dataclass(frozen=True)
class Figure:
    """One figure: the ledger run it reads and how it is drawn (``draw(root, model, path)``)."""

    run: str
    draw: Callable[[Path, str, Path], object]
    per_model: bool = True


def _heatmap(root: Path, model: str, path: Path) -> object:
    a = _analysis(root, model)
    return plotting.massive_heatmap(a["stats"], a["layers"], out=path)


def _emergence(root: Path, model: str, path: Path) -> object:
    a = _analysis(root, model)
    return plotting.emergence(a["fa"], a["em"], out=path)


def _spectrum(root: Path, model: str, path: Path) -> object:
    a = _analysis(root, model)
    return plotting.spectrum(a["fa"], a["layers"], out=path)


def _shift(root: Path, model: str, path: Path) -> object:
    from massmech.studies.shift.study import CHANGES

    rel = pd.read_parquet(_run(root, "shift", model) / CHANGES)
    return plotting.shift_curve(rel.assign(model=model), out=path)


def _heads(root: Path, model: str, path: Path, task: str) -> object:
    from massmech.studies.heads.study import RANKING

    run = _run(root, "heads", model)
    ranking, results = pd.read_parquet(run / RANKING), pd.read_parquet(run / "results.parquet")
    return plotting.heads_figure(ranking[ranking.task == task], results[results.task == task], task=task, model=model,
                                 out=path)


def _attribution(root: Path, model: str, path: Path, task: str) -> object:
    from massmech.studies.attribute.study import BANDS

    bands = pd.read_parquet(_run(root, "attribute", model) / BANDS)
    if task not in set(bands.task):
        raise MissingRun(f"{root / run_folder('attribute', model)} has no {task} rows: `{command('attribute', model, str(root))}`")
    return plotting.band_heatmap(bands[bands.task == task], task=task, model=model, out=path)


def _from_table(run: str, draw: Callable) -> Callable[[Path, str, Path], object]:
    return lambda root, model, path: draw(_table(root, run, model), out=path)


def _from_twins(table: str, draw: Callable) -> Callable[[Path, str, Path], object]:
    return lambda root, model, path: draw(_twins(root)[table], out=path)


FIGURES: dict[str, Figure] = {
    "heatmap": Figure("analyze", _heatmap),
    "bars3d": Figure("analyze", lambda root, model, path: plotting.bars_from_frame(_analysis(root, model)["bars"], out=path)),
    "emergence": Figure("analyze", _emergence),
    "spectrum": Figure("analyze", _spectrum),
    "ablation": Figure("main", _from_table("main", plotting.ablation_bars)),
    "ablation_k": Figure("k", _from_table("k", plotting.ablation_curve)),
    "ablation_layers": Figure("layers", _from_table("layers", plotting.ablation_layers)),
    "dose_response": Figure("dose", _from_table("dose", plotting.dose_response)),
    "pairs_effect": Figure("pairs-effect", _from_table("pairs-effect", plotting.pairs_effect)),
    "quant_tasks": Figure("quant", _from_table("quant", plotting.quant_tasks)),
    "quant_preservation": Figure("quant", _from_table("quant", plotting.quant_preservation)),
    "quant_kv": Figure("quant", _from_table("quant", plotting.quant_kv)),
    # scored first-line, as O11's newest rule (v3) reads them
    **{f"quant_{part}": Figure(f"quant-{part}", lambda root, model, path, part=part: plotting.quant_qk(
        _table(root, f"quant-{part}", model), scorer="first-line", out=path)) for part in ("draws", "parts")},
    "shift": Figure("shift", _shift),
    **{f"heads_{task}": Figure("heads", lambda root, model, path, task=task: _heads(root, model, path, task))
       for task in ("passkey", "kv_lookup")},
    **{f"attribution_{task}": Figure("attribute", lambda root, model, path, task=task: _attribution(root, model, path, task))
       for task in ("passkey", "kv_lookup")},
    "twins_trajectory": Figure("twins", _from_twins("trajectory", plotting.twins_trajectory), per_model=False),
    "twins_bands": Figure("twins", _from_twins("bands", plotting.twins_bands), per_model=False),
    "twins_disruption": Figure("twins", _from_twins("disruption", plotting.twins_disruption), per_model=False),
}


def make_figures(root: str | os.PathLike, out: str | os.PathLike,
                 models: tuple[str, ...] = MODELS) -> tuple[list[Path], list[str]]:
    """Draw every figure whose run exists under ``root`` into ``out`` (PDF + PNG each).

    Returns:
        ``(written, missing)``: the figures drawn (paths without suffix) and, for each run that
        is missing, what makes it.
    """
    root, out = Path(root), Path(out)
    written, missing = [], []
    for name, fig in FIGURES.items():
        for model in models_of(fig.run, models):
            path = out / (f"{name}_{model}" if fig.per_model else name)
            try:
                fig.draw(root, model, path)
            except MissingRun as why:
                if str(why) not in missing:
                    missing.append(str(why))
                continue
            finally:
                plotting.close_all()
            written.append(path)
    return written, missing
