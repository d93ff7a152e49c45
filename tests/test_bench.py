"""Benchmarks that must not rot: each runs in seconds in a small mode and ends with one JSON line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _last_json(args: list[str], env: dict | None = None) -> dict:
    res = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=600,
                         env=None if env is None else os.environ | env)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_gpu_check_runs_tiny_on_cpu(tmp_path):
    r = _last_json(["bench/gpu_check.py", "--size", "tiny", "--device", "cpu", "--dtype", "float32", "--out", str(tmp_path)])
    assert r["doctor"]["ok"] and r["doctor"]["checks"]["logits_match"]
    assert r["capture"]["capture_time_ratio"] > 0 and r["capture"]["tokens"] == 128
    assert 0 <= r["evaluation"]["verdict_agreement"] <= 1 and r["twins"]["step_s"] > 0
    assert json.loads((tmp_path / "gpu_check.json").read_text()) == r


def test_import_time_reports_its_targets():
    r = _last_json(["bench/import_time.py", "--repeats", "1"])
    assert {"help_seconds", "import_overhead_seconds", "help_ok", "import_overhead_ok", "slowest_command",
            "slowest_command_help_seconds", "command_help_ok"} <= set(r)
    assert r["bare_import_seconds"] < r["torch_import_seconds"]  # import massmech does not import torch


def test_scale_capture_runs_tiny():
    r = _last_json(["bench/scale.py", "--size", "tiny", "--sections", "capture"])
    assert r["sections"] == ["capture"] and "ray_speedup" not in r
    for dtype in ("bfloat16", "float32"):
        c = r["capture"][dtype]
        assert c["dtype"] == dtype and c["tokens"] == c["n_tokens_counted"] == 128 and c["stats_finite"]
        assert c["capture_time_ratio"] > 0 and c["capture_time_ratio_from_hooks"] > 1  # the hooks did run
        assert 1.0 < c["peak_memory_ratio"] < 2 and c["bare_peak_mib"] > 0  # capture adds its accumulators, live at the peak
        assert r["capture_time_ratio"][dtype] == c["capture_time_ratio"]
        assert r["peak_memory_ratio"][dtype] == c["peak_memory_ratio"]


def test_scale_reports_a_missing_ray_instead_of_failing(tmp_path):
    (tmp_path / "ray").mkdir()
    (tmp_path / "ray" / "__init__.py").write_text("raise ImportError('hidden by the test')\n")
    r = _last_json(["bench/scale.py", "--size", "tiny", "--sections", "ray"], env={"PYTHONPATH": str(tmp_path)})
    assert r["ray_speedup"] is None and "not importable" in r["ray"]["reason"]


def test_scale_ray_sweep_runs_tiny():
    pytest.importorskip("ray")
    r = _last_json(["bench/scale.py", "--size", "tiny", "--sections", "ray", "--ray-n", "2"])
    assert r["ray_speedup"] == r["ray"]["ray_speedup"] > 0, r["ray"]
    assert r["ray"]["ray_table_equal"] and r["ray"]["cells"] == 52 and r["ray"]["workers"] == 2
    assert r["ray"]["ray_speedup_session"] > 0  # the same sweep again in one session, on warm workers


def test_eval_speed_ratios_run_tiny():
    r = _last_json(["bench/eval_speed.py", "--model", "tiny-llama", "--tasks", "kv_lookup", "--n", "2", "--topk", "2",
                    "--sections", "ratios", "--repeats", "1", "--upstream-tokens", "4"])
    e = r["eval_ratios"]
    assert r["prefill_efficiency"] == e["prefill_efficiency"] > 0
    assert r["upstream_style_speedup"] == e["upstream_style_speedup"] > 0
    assert 0 <= r["upstream_verdict_agreement"] == e["verdict_agreement"] <= 1
    assert e["n_verdicts"] == 2 * 2 and e["max_new_tokens"] == 4
    assert "teacher_forced_speedup" not in r  # only the section asked for ran


def test_eval_speed_share_section_runs_tiny():
    r = _last_json(["bench/eval_speed.py", "--model", "tiny-llama", "--n", "3", "--topk", "2", "--sections", "share",
                    "--repeats", "1"])
    assert r["shared_prompt_speedup"] > 0 and r["shared_verdict_agreement"] == 1.0
    assert set(r["shared_by_task"]) == {"kv_lookup", "city_country_0shot"}
    assert all(t["n_verdicts"] == 3 * 3 for t in r["shared_by_task"].values()) and r["shared_max_logprob_diff"] < 1e-3


def test_ledger_time_splits_reproduce_by_study():
    r = _last_json(["bench/ledger_time.py", "--quick", "--only", "analyze", "--models", "tiny-llama", "--no-docs"])
    assert set(r["studies_seconds"]) == {"analyze"} and r["total_seconds"] >= r["studies_seconds"]["analyze"] > 0
    assert list(r["runs_seconds"]) == ["analyze/ledger/tiny-llama"] and "P5 / tiny-llama" in r["not_judged"]
    # the capture's passes are timed, and they are part of the study's time
    assert 0 < r["forward_seconds"]["analyze"] <= r["studies_seconds"]["analyze"] + 0.1
    assert r["forward_ratio"] == pytest.approx(r["total_seconds"] / r["forward_seconds"]["analyze"], rel=0.01) and r["forward_ratio"] >= 1
    # the capture's hooks are timed inside those passes; the bare ratio leaves them out
    hooks = r["hook_seconds"]["analyze"]
    assert 0 < hooks < r["forward_seconds"]["analyze"]
    assert r["bare_ratio"] == pytest.approx(r["total_seconds"] / (r["forward_seconds"]["analyze"] - hooks), rel=0.01)


def test_load_time_runs_tiny():
    r = _last_json(["bench/load_time.py", "--models", "tiny-llama", "--repeats", "1"])
    tiny = r["models"]["tiny-llama"]
    assert r["warm_seconds"] == tiny["warm_seconds"] > 0 and tiny["imports_seconds"] > 0
    assert r["goal"] == {"warm_seconds": 5.0, "cold_over_warm": 8.0}


def test_ledger_time_reads_the_recorded_seconds_of_current_cells_only(tmp_path):
    from massmech.studies.registry import get_study

    current = get_study("ablation").version

    def cell(name: str, version: int, seconds: float, group: str = "m", study: str = "ablation") -> None:
        (tmp_path / study / name).mkdir(parents=True)
        (tmp_path / study / name / "cell.json").write_text(json.dumps(
            {"study": study, "version": version, "timing": {"group": group, "cell_seconds": seconds}}))

    cell("a", current, 2.0)
    cell("b", current, 3.5)
    cell("c", current - 1, 100.0)  # an older version's cell: not what the ledger reads now
    cell("d", 1, 7.0, study="no-such-study")
    cell(".tmp-a-123-x", current, 2.0)  # a cell being written
    r = _last_json(["bench/ledger_time.py", "--cells", str(tmp_path)])
    assert r["cell_seconds"] == {"ablation": {"m": {"cells": 2, "seconds": 5.5}}}
    assert r["total_cell_seconds"] == 5.5 and r["total_cells"] == 2


def test_perplexity_memory_runs_tiny():
    r = _last_json(["bench/perplexity_memory.py", "--model", "tiny-llama", "--batch", "4", "--seq", "64"])
    assert r["nll_ok"] and r["peak_gb_rows"] > 0 and {"peak_ratio", "peak_ok", "peak_gb_whole"} <= set(r)
