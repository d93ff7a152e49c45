"""The whole pipeline on a tiny model (reproduce --quick: every ledger run, figures, ledger, docs),
and the analyses/ scripts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.integration  # minutes: each script is its own interpreter


def _run(args: list[str], cwd: Path = ROOT) -> str:
    env = os.environ | {"TQDM_DISABLE": "1", "PYTHONWARNINGS": "ignore"}
    res = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=1500)
    assert res.returncode == 0, f"{args[:3]} failed:\n{res.stdout[-3000:]}\n{res.stderr[-4000:]}"
    return res.stdout


def test_reproduce_quick_on_a_tiny_model(tmp_path):
    """Every run the ledger reads, on tiny-llama, end to end: runs -> cells -> figures -> ledger -> strict docs build."""
    runs = tmp_path / "runs"
    # relative, as `make reproduce-quick` passes it (runs/quick): mkdocs reads docs_dir relative to its config
    relative = os.path.relpath(runs, ROOT)
    out = _run(["-m", "massmech", "reproduce", "--quick", "--models", "tiny-llama", "--runs", relative, "--json"])
    done = json.loads(out)
    from massmech.report.runs import RUNS, missing_inputs, models_of, run_folder

    made = {run_folder(r, m) for r in RUNS for m in models_of(r, ("tiny-llama",)) if not missing_inputs(r, m)}
    assert set(done["seconds"]) == made
    assert done["not_judged"] == []  # every ledger row has a verdict
    ledger = (runs / "docs" / "ledger.md").read_text()
    assert ledger.count("| tiny-llama |") >= 10 and "toy twins | largest per-head" in ledger
    assert (runs / "site" / "ledger.html").is_file()  # the strict build of the regenerated docs passed
    gallery = sorted(p.name for p in (runs / "docs" / "gallery").glob("*.png"))
    assert {"heatmap_tiny-llama.png", "dose_response_tiny-llama.png", "twins_bands.png"} <= set(gallery)
    assert (ROOT / "docs" / "ledger.md").read_text() != ledger  # the project's own docs were not touched
    again = json.loads(_run(["-m", "massmech", "reproduce", "--quick", "--models", "tiny-llama", "--runs", str(runs),
                             "--no-docs", "--json"]))
    assert sum(again["seconds"].values()) < sum(done["seconds"].values())  # resumed from the cells


@pytest.mark.xdist_group("tiny-twins")
def test_analyses_scripts_run_on_tiny_models(tmp_path, tiny_twins_run):
    runs = tmp_path / "runs"
    m = "tiny-llama"
    _run(["analyses/kv_quant_perplexity.py", "--model", m, "--out", str(runs / "quant-kv" / m)])
    _run(["analyses/massive_low_band.py", "--model", m, "--tokens", "1024", "--out", str(runs / "low_band")])
    pairs = json.loads(_run(["analyses/pair_vs_dim.py", "--model", m, "--n", "8", "--ks", "1", "--tasks", "kv_lookup",
                             "--out", str(runs / "pairs")]).splitlines()[-1])
    assert [(r["task"], r["k"]) for r in pairs] == [("kv_lookup", 1)] and pairs[0]["n_dims_pair"] == 2 * pairs[0]["n_dims_dim"]
    bias = json.loads(_run(["analyses/kv_position_bias.py", "--model", m, "--n", "8", "--lam", "1.2"]).splitlines()[-1])["conditions"]
    assert list(bias) == ["baseline", "massive", "matched control"]
    assert all(sum(c["chosen_position_counts"]) + c["chosen_position_unknown"] == c["n"] == 8 and len(c["accuracy_by_slot"]) == 8 for c in bias.values())
    bands = json.loads(_run(["analyses/band_attribution.py", "--model", m, "--n", "2", "--tasks", "passkey",
                             "--out", str(runs / "attribute")]).splitlines()[-1])
    assert {(r["edge"], r["grouping"]) for r in bands} == {(e, g) for e in ("needle", "sink") for g in ("band", "massive")}
    report = _run(["analyses/twins_report.py", "--out", str(tiny_twins_run[0])])
    assert "## Scores at the final checkpoint" in report
    _run(["analyses/twins_alphabet.py", "--preset", "tiny", "--out", str(runs / "twins" / "alphabet")])
