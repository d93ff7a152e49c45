"""How long ``massmech --help`` and ``import massmech`` take (issue 13's targets).

Each number is the median of ``--repeats`` fresh interpreter runs (wall time, after one warm-up
run so the OS file cache is warm):

* ``help_seconds``: ``python -m massmech --help`` (goal < 1 s).
* ``slowest_command_help_seconds``: the slowest ``python -m massmech COMMAND --help`` over every
  subcommand (``slowest_command`` names it; goal <= 0.3 s: a study's flags come from its config
  class, which must not import torch).
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
    from massmech.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    commands = {c: wall([py, "-m", "massmech", c, "--help"], args.repeats) for c in dict.fromkeys(sub.choices)}
    slowest = max(commands, key=commands.get)
    for name, seconds in {**t, **{f"{c} --help": s for c, s in commands.items()}}.items():
        print(f"{name:>16}: {seconds:.3f} s")
    result = {
        "help_seconds": round(t["help"], 3),
        "import_overhead_seconds": round(t["core"] - t["torch"], 3),
        "bare_import_seconds": round(t["bare"], 3),
        "torch_import_seconds": round(t["torch"], 3),
        "studies_import_seconds": round(t["studies"], 3),
        "repeats": args.repeats,
        "slowest_command": slowest,
        "slowest_command_help_seconds": round(commands[slowest], 3),
        "help_ok": t["help"] < 1.0,
        "command_help_ok": commands[slowest] <= 0.3,
        "import_overhead_ok": t["core"] - t["torch"] <= 0.5,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
