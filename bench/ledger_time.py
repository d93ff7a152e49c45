"""The wall time of the whole ledger: ``massmech reproduce`` (full or ``--quick``), split by study.

A researcher's real wait is every run the ledger reads, then the figures, the ledger, the docs and
the site (issue 28). This runs ``python -m massmech reproduce`` once in a fresh process into a
fresh runs root (a temp folder, so no cell is reused: the time from nothing) unless ``--runs``
names one to resume, and reads the per-run seconds that ``reproduce`` records in its
``reproduce.json``:

* ``total_seconds``: the command's wall time, start-up and imports included;
* ``runs_seconds``: each run folder's seconds; ``studies_seconds``: those summed per study;
* ``docs_seconds``: the rest (figures, ledger, docs, site, start-up).

* ``forward_seconds``: each study's seconds inside forward passes (``reproduce`` reads
  ``massmech.core.clock.FORWARDS`` around each run: every pass of every model it loads, the
  passes cut short included); ``forward_ratio`` = ``total_seconds`` ÷ their sum, issue 28's
  ratio of the whole wait to the forward passes (goal <= 1.5). The hooks a pass runs (capture,
  disruption) are timed as part of it, so this is a lower bound of the ratio to *bare* passes;
* ``hook_seconds``: the part of those seconds spent in massmech's hooks (each hook given to
  ``LoadedModel.hooks`` is timed); ``bare_ratio`` = ``total_seconds`` ÷ (forward − hook seconds),
  the ratio to bare passes (each pass's own compute: what the hooks leave).
  Training passes of the twins (forward and backward) are not forward passes of a loaded model and
  count as overhead here.

``--cells DIR`` runs nothing: the full ledger takes more than a working session on 2 cores, so
its runs are made over several (each resuming from the committed cells). What its cells cost
is read from the store instead: each current-version cell records the seconds of its share of
the unit that computed it, model loads excluded (``timing.cell_seconds``). ``cell_seconds``
sums them per study and model, with the cell counts; these are compute seconds as recorded
where the cells were computed (here: two sweeps at once on 2 cores, niced beside other work),
not one uninterrupted wall time, and a run not yet finished has only its finished cells.

Usage: python bench/ledger_time.py [--quick] [--only RUN,RUN] [--models M1,M2] [--no-docs] [--runs DIR]
       python bench/ledger_time.py --cells runs/cells
The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def from_cells(cells: Path) -> dict:
    """Recorded compute seconds of the current-version cells under ``cells``, per study and model."""
    from massmech.studies.registry import get_study

    by: dict[str, dict[str, list[float]]] = {}
    for meta_file in sorted(cells.glob("*/*/cell.json")):
        if meta_file.parent.name.startswith("."):  # a cell being written (or left by a killed writer)
            continue
        meta = json.loads(meta_file.read_text())
        study, timing = meta.get("study"), meta.get("timing") or {}
        try:
            current = get_study(study).version
        except Exception:  # a store folder of no registered study: not the ledger's
            continue
        if meta.get("version") != current or not isinstance(timing.get("cell_seconds"), int | float):
            continue
        by.setdefault(study, {}).setdefault(str(timing.get("group")), []).append(float(timing["cell_seconds"]))
    out = {study: {g: {"cells": len(v), "seconds": round(sum(v), 1)} for g, v in sorted(groups.items())}
           for study, groups in sorted(by.items())}
    for study, groups in out.items():
        print(f"{study:10s} " + "; ".join(f"{g}: {r['cells']} cells, {r['seconds']:.0f} s" for g, r in groups.items()))
    total = sum(r["seconds"] for groups in out.values() for r in groups.values())
    return {"cells_dir": str(cells), "cell_seconds": out, "total_cell_seconds": round(total, 1),
            "total_cells": sum(r["cells"] for groups in out.values() for r in groups.values()), "cpus": os.cpu_count()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="each study's quick config (what CI runs)")
    ap.add_argument("--only", default=None, help="only these runs (reproduce --only)")
    ap.add_argument("--no-docs", action="store_true", help="the runs only")
    ap.add_argument("--runs", default=None, help="a runs root to use (default: a fresh temp folder)")
    ap.add_argument("--models", default=None, help="the ledger's models (reproduce --models; default: the embedded)")
    ap.add_argument("--cells", type=Path, default=None, help="run nothing: the recorded seconds of the cells in this store")
    args = ap.parse_args()
    if args.cells is not None:
        if not args.cells.is_dir():
            sys.exit(f"ledger_time: no cell store at {args.cells}")
        print(json.dumps(from_cells(args.cells)))
        return
    with tempfile.TemporaryDirectory(prefix="massmech-ledger-time-") as tmp:
        root = Path(args.runs or Path(tmp) / "runs")
        cmd = [sys.executable, "-m", "massmech", "reproduce", "--runs", str(root), "--json"]
        cmd += ["--quick"] * args.quick + ["--no-docs"] * args.no_docs + (["--only", args.only] if args.only else [])
        cmd += ["--models", args.models] if args.models else []
        env = {**os.environ, "TQDM_DISABLE": "1"}
        start, started = time.perf_counter(), time.time()
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        total = time.perf_counter() - start
        record_file = root / "reproduce.json"  # exit 1 with a fresh record = rows left unjudged (--only)
        if not record_file.exists() or record_file.stat().st_mtime < started:
            sys.exit(f"reproduce failed ({done.returncode}):\n{done.stderr[-3000:]}")
        record = json.loads(record_file.read_text())
    runs, forward, hooked = record["seconds"], record.get("forward_seconds", {}), record.get("hook_seconds", {})
    studies: dict[str, float] = {}
    in_forward: dict[str, float] = {}
    in_hooks: dict[str, float] = {}
    for folder, seconds in runs.items():  # run folders are STUDY/PRESET/MODEL
        study = folder.split("/")[0]
        studies[study] = round(studies.get(study, 0.0) + seconds, 1)
        in_forward[study] = round(in_forward.get(study, 0.0) + (forward.get(folder) or 0.0), 3)
        in_hooks[study] = round(in_hooks.get(study, 0.0) + (hooked.get(folder) or 0.0), 3)
    for folder, seconds in sorted(runs.items(), key=lambda kv: -kv[1]):
        print(f"{folder:45s} {seconds:8.1f} s   in forward passes {forward.get(folder) or 0.0:8.1f} s"
              f"   in hooks {hooked.get(folder) or 0.0:7.1f} s", flush=True)
    passes = sum(in_forward.values())
    bare = passes - sum(in_hooks.values())
    print(json.dumps({"quick": args.quick, "total_seconds": round(total, 1), "studies_seconds": studies,
                      "forward_seconds": in_forward, "forward_ratio": round(total / passes, 2) if passes else None,
                      "forward_ratio_goal": 1.5,
                      "hook_seconds": in_hooks, "bare_ratio": round(total / bare, 2) if bare > 0 else None, "docs_seconds": round(total - sum(runs.values()), 1),
                      "runs_seconds": runs, "not_judged": record.get("not_judged", []), "cpus": os.cpu_count()}))


if __name__ == "__main__":
    main()
