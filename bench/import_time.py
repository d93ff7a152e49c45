"""How long ``massmech --help`` and ``import massmech`` take (issue 13's targets).

Each number is the median of ``--repeats`` fresh interpreter runs (wall time, after one warm-up
run so the OS file cache is warm):

* ``help_seconds``: ``python -m massmech --help`` (goal < 1 s).
* ``import_overhead_seconds``: ``import massmech`` plus the core measurement API
  (``load_model, capture_stats, detect_massive, frequency_analysis``) minus ``import torch``
  (goal <= 0.5 s). The core layer needs torch, numpy and pandas; this is what massmech adds.
* ``bare_import_seconds``: ``import massmech`` alone (lazy: torch is not imported).

The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

SNIPPETS = {
    "torch": "import torch",
    "bare": "import massmech",
    "core": "import massmech; from massmech import load_model, capture_stats, detect_massive, frequency_analysis",
    "studies": "from massmech import run_sweep, run_quant_study, run_twins",
}


def wall(args: list[str], repeats: int) -> float:
    subprocess.run(args, check=True, capture_output=True)  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run(args, check=True, capture_output=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    py = sys.executable
    t = {name: wall([py, "-c", code], args.repeats) for name, code in SNIPPETS.items()}
    t["help"] = wall([py, "-m", "massmech", "--help"], args.repeats)
    for name, seconds in t.items():
        print(f"{name:>8}: {seconds:.3f} s")
    result = {
        "help_seconds": round(t["help"], 3),
        "import_overhead_seconds": round(t["core"] - t["torch"], 3),
        "bare_import_seconds": round(t["bare"], 3),
        "torch_import_seconds": round(t["torch"], 3),
        "studies_import_seconds": round(t["studies"], 3),
        "repeats": args.repeats,
        "help_ok": t["help"] < 1.0,
        "import_overhead_ok": t["core"] - t["torch"] <= 0.5,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
