"""Cold vs warm load time of the embedded models (the one-time GGUF conversion cache).

Cold: a fresh, empty massmech cache (``MASSMECH_CACHE`` in a temp folder), so the load parses
the GGUF file (Gemma-3: assembles it from its chunk packages first), dequantizes it and writes
the safetensors conversion. Warm: the next loads from that cache. Each load runs in its own
Python process, which times ``mm.load_model(name)`` as a user writes it (``import massmech``
excluded: that is bench/import_time.py's business). The imports a first load needs (torch,
transformers' model code, TransformerLens' bridge) are in that time, done as massmech does them,
with the garbage collector held off (``massmech._gc``); their share is reported apart as
``imports_seconds``, from other fresh processes that import those three alone under the same
pause. The goal is judged on the whole load, what a user waits for. Warm is the median of
``--repeats`` processes.

Goal: warm load of each model <= 5 s on 2 cores, and cold / warm >= 8 for both.
The last line is one JSON object: ``warm_seconds`` (the slower model's warm load),
``cold_over_warm`` (the smaller of the two ratios) and ``models`` (per-model times).

Usage: python bench/load_time.py [--models smollm2-135m gemma3-270m] [--repeats 3]  (about 2-3 minutes)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

CHILD = """
import sys, time
import massmech as mm
t = time.perf_counter()
mm.load_model(sys.argv[1])
print("SECONDS", time.perf_counter() - t)
"""
IMPORTS = """
import time
from massmech._gc import gc_paused
t = time.perf_counter()
with gc_paused():
    import torch, transformers.modeling_utils, transformer_lens.model_bridge
print("SECONDS", time.perf_counter() - t)
"""


def _child(code: str, *args: str, cache: str | None = None) -> float:
    """Seconds a fresh Python process reports for ``code`` (its ``SECONDS`` line)."""
    env = {**os.environ, "TQDM_DISABLE": "1", **({"MASSMECH_CACHE": cache} if cache else {})}
    out = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, check=True)
    return float(next(line for line in out.stdout.splitlines() if line.startswith("SECONDS")).split()[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["smollm2-135m", "gemma3-270m"])
    ap.add_argument("--repeats", type=int, default=3, help="warm loads per model (median)")
    args = ap.parse_args()
    result = {}
    for model in args.models:
        with tempfile.TemporaryDirectory(prefix="massmech-bench-cache-") as cache:
            cold = _child(CHILD, model, cache=cache)
            warm = [_child(CHILD, model, cache=cache) for _ in range(args.repeats)]
        w, imp = statistics.median(warm), statistics.median(_child(IMPORTS) for _ in range(args.repeats))
        result[model] = {"cold_seconds": round(cold, 2), "warm_seconds": round(w, 2),
                         "warm_all": [round(x, 2) for x in warm], "cold_over_warm": round(cold / w, 1),
                         "imports_seconds": round(imp, 2), "after_imports_seconds": round(w - imp, 2)}
        print(f"{model:14s} cold {cold:6.1f} s   warm {w:5.2f} s (imports {imp:4.2f} s; of {[round(x, 2) for x in warm]})"
              f"   cold/warm {cold / w:5.1f}", flush=True)
    print(json.dumps({
        "warm_seconds": max(r["warm_seconds"] for r in result.values()),
        "cold_over_warm": min(r["cold_over_warm"] for r in result.values()),
        "goal": {"warm_seconds": 5.0, "cold_over_warm": 8.0},
        "models": result,
    }))


if __name__ == "__main__":
    main()
