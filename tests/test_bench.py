"""Benchmarks that must not rot: each runs in seconds in a small mode and ends with one JSON line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _last_json(args: list[str]) -> dict:
    res = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=600)
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
    assert {"help_seconds", "import_overhead_seconds", "help_ok", "import_overhead_ok"} <= set(r)
    assert r["bare_import_seconds"] < r["torch_import_seconds"]  # import massmech does not import torch
