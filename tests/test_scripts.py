"""Every analyses/ and paper_figures/ script runs, on tiny models (the figures from tiny runs only)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.integration  # minutes: each script is its own interpreter


def _run(args: list[str], cwd: Path = ROOT) -> str:
    env = os.environ | {"TQDM_DISABLE": "1", "PYTHONWARNINGS": "ignore"}
    res = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, f"{args[0]} failed:\n{res.stdout[-2000:]}\n{res.stderr[-4000:]}"
    return res.stdout


def test_every_script_runs_on_tiny_models(tmp_path):
    runs, figs = tmp_path / "runs", tmp_path / "figures"
    m = "tiny-llama"
    _run(["-m", "massmech", "analyze", "--model", m, "--out", str(runs / "analyze" / m), "--tokens", "256", "--seq-len", "64"])
    cells = ["--cells", str(runs / "sweeps" / "cells")]
    _run(["analyses/ablation_main.py", "--model", m, "--task", "kv_lookup", "--task", "country_capital", "--n", "4",
          "--lam", "1.2", "--out", str(runs / "sweeps" / "main"), *cells])  # random weights: nothing is 5x the mean
    _run(["analyses/ablation_grid.py", "--preset", "dose", "--model", m, "--n", "4", "--ks", "1,4",
          "--task", "kv_lookup", "--out", str(runs / "sweeps" / "dose"), *cells])
    assert (runs / "sweeps" / "dose" / "figures" / "dose_response.png").stat().st_size > 1000
    for preset in ("k", "layers"):
        _run(["analyses/ablation_grid.py", "--preset", preset, "--model", m, "--n", "4", "--lam", "1.2", "--ks", "1,4",
              "--task", "kv_lookup", "--task", "country_capital", "--out", str(runs / "sweeps" / preset), *cells])
    _run(["analyses/quant_study.py", "--model", m, "--grid", "core", "--n", "4", "--tasks", "kv_lookup,country_capital",
          "--calib-tokens", "512", "--out", str(runs / "quant" / m)])
    _run(["analyses/kv_quant_perplexity.py", "--model", m, "--out", str(runs / "quant-kv" / m)])
    _run(["analyses/massive_low_band.py", "--model", m, "--tokens", "256", "--out", str(runs / "low_band")])
    _run(["-m", "massmech", "twins", "--preset", "tiny", "--out", str(runs / "twins" / "demo"), "--workers", "1"])
    report = _run(["analyses/twins_report.py", "--out", str(runs / "twins" / "demo")])
    assert "## Scores at the final checkpoint" in report
    _run(["analyses/twins_alphabet.py", "--preset", "tiny", "--out", str(runs / "twins" / "alphabet")])
    _run(["paper_figures/make_all.py", "--model", m, "--runs", str(runs), "--out", str(figs)])
    made = sorted(p.stem for p in figs.glob("*.pdf"))
    assert len(made) == 13 and all((figs / f"{s}.png").stat().st_size > 1000 for s in made), made
    # the docs' ledger, results pages and gallery, generated from these runs
    docs = tmp_path / "docs"
    _run(["-m", "massmech", "report", "--docs", str(runs), "--out", str(docs), "--models", m, "--figures", str(figs)])
    ledger = (docs / "ledger.md").read_text()
    assert ledger.count(f"| {m} |") >= 10 and "| P4 | Massive values appear from the early layers on | tiny-llama | Q: " in ledger
    assert "toy twins | largest per-head" in ledger  # the twins run was read
    assert len(list((docs / "gallery").glob("*.png"))) == 13 and (docs / "results" / "index.md").is_file()


def test_a_missing_run_names_the_make_target(tmp_path):
    res = subprocess.run([sys.executable, "paper_figures/fig_heatmap.py", "--model", "tiny-llama", "--runs", str(tmp_path)],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode != 0 and "make analyze" in res.stderr
