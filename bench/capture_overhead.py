"""Cost of streaming Q/K/V capture against a bare bridge forward (and run_with_cache).

Prints, in one run:
  (a) time of capture_stats (Q/K/V, pre+post RoPE, all layers) / time of a bare forward of the
      same batch (target <= 1.10), with run_with_cache of the same hooks as the reference line;
  (b) peak memory above the loaded model at 512, 2048 and 4096 tokens / the bare forward's
      (target <= 1.2 and flat in tokens), again with run_with_cache as the reference line.
The last line is one JSON object with `capture_time_ratio` and `peak_memory_ratio_4096`.

Peak memory is the process's peak RSS (VmHWM, reset through /proc/self/clear_refs before each
measurement) minus its RSS just before. It is measured in a child process in which glibc returns
every allocation of 64 KiB or more to the OS (MALLOC_MMAP_THRESHOLD_), so freed tensors do not
hide in the heap (a 4 MiB threshold was tried and let heap reuse distort the ratios: 0.68 at
2048 tokens); that setting slows allocation, so times are measured in the parent without it.
The timing ratio is noisy on a shared 2-core machine (1.023, 1.080, 0.997 in three runs).

Usage: python bench/capture_overhead.py [--model smollm2-135m] [--repeats 5]  (about 8 minutes)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time

import torch  # noqa: E402

import massmech as mm  # noqa: E402
from massmech.core.corpus import bbc_news  # noqa: E402
from massmech.core.sites import SITES  # noqa: E402


def _status(field: str) -> int:
    text = open("/proc/self/status").read()
    return int(re.search(rf"{field}:\s+(\d+)", text).group(1)) * 1024


def peak_bytes(fn) -> int:
    """Peak RSS above the current RSS while ``fn`` runs."""
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # reset VmHWM to the current RSS
    before = _status("VmRSS")
    fn()
    return _status("VmHWM") - before


def timed(fns: dict, repeats: int) -> dict[str, float]:
    """Median seconds of each function, run in interleaved rounds after one warm-up each."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=mm.DEFAULT_MODEL)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--time-batch", type=int, nargs=2, default=[4, 512], metavar=("B", "L"))
    ap.add_argument("--memory-tokens", type=int, nargs="+", default=[512, 2048, 4096])
    ap.add_argument("--memory-only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()

    torch.manual_seed(0)
    model = mm.load_model(args.model)
    need = max(args.time_batch[0] * args.time_batch[1], *args.memory_tokens)
    stream: list[int] = []
    for ids in model.tokenize(bbc_news(seed=0)[:400]):
        stream.extend(ids)
        if len(stream) >= need:
            break
    stream_t = torch.tensor(stream[:need])
    keys = [(s, st) for s in SITES for st in model.stages(s)]
    names = {model.hook_name(s, st, li)[0] for s, st in keys for li in range(model.info.n_layers)}

    def bare(ids):
        with torch.inference_mode():
            model.bridge(ids, return_type=None)

    def capture(ids):
        mm.capture_stats(model, ids, batch_size=ids.shape[0], progress=False)

    def cached(ids):
        with torch.inference_mode():
            _, cache = model.bridge.run_with_cache(ids, names_filter=lambda n: n in names, return_type=None)
        assert len(cache) == len(names), "run_with_cache missed hooks"
        return cache

    if args.memory_only:
        rows = {}
        for n in args.memory_tokens:
            ids = stream_t[:n][None]
            bare(ids), capture(ids)  # warm-up at this size
            rows[n] = [peak_bytes(lambda f=f, ids=ids: f(ids)) for f in (bare, capture, cached)]
        print(json.dumps(rows))
        return

    b, length = args.time_batch
    batch = stream_t[: b * length].view(b, length)
    t = timed(
        {"bare": lambda: bare(batch), "capture": lambda: capture(batch), "rwc": lambda: cached(batch)},
        args.repeats,
    )
    t_bare, t_cap, t_rwc = t["bare"], t["capture"], t["rwc"]
    print(f"model {model.info.name}, {torch.get_num_threads()} threads, {len(names)} hooks")
    print(f"(a) time, batch {b}x{length}, median of {args.repeats} interleaved rounds:")
    print(f"    bare forward      {t_bare:8.3f} s   1.000")
    print(f"    capture_stats     {t_cap:8.3f} s   {t_cap / t_bare:.3f}   (target <= 1.10)")
    print(f"    run_with_cache    {t_rwc:8.3f} s   {t_rwc / t_bare:.3f}   (reference)")

    del model
    out = subprocess.run(
        [sys.executable, __file__, "--memory-only", "--model", args.model, "--memory-tokens",
         *map(str, args.memory_tokens)],
        env=os.environ | {"MALLOC_MMAP_THRESHOLD_": "65536", "TQDM_DISABLE": "1"},
        capture_output=True, text=True, check=True,
    )
    rows = json.loads(out.stdout.strip().splitlines()[-1])
    print("(b) peak memory above the loaded model, one sequence:")
    print(f"    {'tokens':>6}  {'bare MiB':>9}  {'capture MiB':>11} {'ratio':>6}  {'rwc MiB':>8} {'ratio':>6}")
    ratios = {}
    for n, (m_bare, m_cap, m_rwc) in rows.items():
        ratios[int(n)] = m_cap / m_bare
        print(
            f"    {int(n):6d}  {m_bare / 2**20:9.1f}  {m_cap / 2**20:11.1f} {m_cap / m_bare:6.3f}"
            f"  {m_rwc / 2**20:8.1f} {m_rwc / m_bare:6.3f}"
        )
    last = args.memory_tokens[-1]
    print(
        json.dumps(
            {
                "capture_time_ratio": round(t_cap / t_bare, 4),
                "run_with_cache_time_ratio": round(t_rwc / t_bare, 4),
                f"peak_memory_ratio_{last}": round(ratios[last], 4),
                "peak_memory_ratios": {str(k): round(v, 4) for k, v in ratios.items()},
                "model": args.model,
            }
        )
    )


if __name__ == "__main__":
    main()
