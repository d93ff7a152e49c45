"""Scale on CPU: capture overhead on a Llama-3.2-1B-shaped model (bf16 and fp32), and the tiny sweep on Ray.

Issue 16's CPU benchmark. Sections (``--sections``, comma-separated; default both):

* ``capture``: a random-init Llama shaped like Llama-3.2-1B (16 layers, d_model 2048, 32 heads,
  8 KV heads, d_head 64, intermediate 8192, RoPE theta 500000; the byte-level vocabulary of 259,
  so the unembedding is negligible) is built in each ``--dtypes`` (bf16 and fp32) and wrapped by
  the bridge. On ``--tokens`` B x L random ids (4 x 1024):

  - ``capture_time_ratio`` = seconds of ``capture_stats`` (Q/K/V, pre+post RoPE, all layers,
    one batch of B sequences) ÷ seconds of a bare bridge forward of the same ids (goal <= 1.05):
    ``--repeats`` interleaved rounds (bare, capture, bare, capture, ...) after a short warm-up of
    both; the median over rounds of each round's capture ÷ bare (neighbours share the machine's
    load). ``capture_cpu_time_ratio`` is the same on this process's CPU time.
    ``capture_time_ratio_from_hooks`` = (bare + seconds spent inside the capture's hooks) ÷ bare:
    the hooks are timed directly (``HookTimer``), so this estimate of the capture's own cost is
    far less exposed to other jobs on a shared machine than the end-to-end ratio.
  - ``peak_memory_ratio`` = peak memory of the capture ÷ that of the bare forward (goal <= 1.1).
    Peak memory is the largest number of bytes held at once by tensors allocated during the call
    (the weights, already live, are not counted): the running sum of the CPU allocator's events
    recorded by the torch profiler (``profile_memory=True``), see ``_harness.peak_bytes``. This is
    the CPU counterpart of ``torch.cuda.max_memory_allocated`` and, unlike peak RSS, does not
    depend on glibc returning or reusing freed heap blocks. It is recorded during the timed
    rounds themselves (the profiler's per-op cost, microseconds, is lost in a forward of minutes;
    at ``--size tiny`` it is not, and the tiny times mean nothing); the median over rounds.

* ``ray``: the tiny sweep (two tiny random models x two tasks x top-k conditions and controls,
  ``--ray-n`` examples per task) run by ``run_sweep(..., executor=<ray executor>)`` with 2 workers
  of one torch thread each on a local Ray (``ray.init(num_cpus=2)``), against the serial executor
  at one torch thread: ``ray_speedup`` = serial seconds ÷ Ray seconds (goal >= 1.6), with
  ``ray_table_equal`` (the two results tables agree). Ray's own start-up (``ray.init``) is not
  timed; worker start-up and model loading inside the workers are. Each run gets a fresh cell
  store. The same is run again at 4x the examples (``ray_speedup_4n``); from the two workloads,
  ``ray_marginal_speedup`` = extra serial seconds ÷ extra Ray seconds (how Ray scales once its
  workers run) and ``ray_fixed_s`` = Ray seconds at ``n`` less serial seconds ÷ that speedup
  (what starting the workers and loading their models costs). The serial run is timed one model
  at a time: ``ray_balance_bound`` = serial seconds ÷ the slowest model's (at 4x), the best Ray
  can do when each model's cells stay on one worker. ``ray_speedup_session``: the ``n`` sweep run
  a second time in one Ray session (``with executor:``, as ``massmech reproduce`` runs every
  study), serial seconds ÷ the second run's: its workers are started, their imports done and their
  models loaded by the first run (the serial time still includes its model loads, about 0.1 s a
  tiny model); the goal is judged on ``ray_speedup``, the cold run. If ``ray`` is not importable or massmech has no ``"ray"`` executor, ``ray_speedup`` is
  ``null`` and ``ray.reason`` says why.

``--size tiny`` runs both sections in seconds on a 2-layer model (the test suite runs it so the
script cannot rot). At the 1B shape a bare forward of 4 x 1024 tokens takes 1.5-3 minutes in bf16
and 3-6 in fp32 on 2 shared cores, so the full run takes 30-45 minutes; ``--layers 4`` gives the
same per-layer overheads sooner. The last line printed is one JSON object.

    python bench/scale.py [--size 1b] [--sections capture,ray] [--dtypes bfloat16 float32]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import tempfile
import time
import traceback
from pathlib import Path

import torch
from _harness import build_llama, interleaved

import massmech as mm

SIZES = {  # Llama-3.2-1B: 16 layers, d_model 2048, 32 heads, 8 KV heads, d_head 64, theta 500000
    "1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
               num_key_value_heads=8, head_dim=64),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=16),
}
PLAN = {"1b": dict(tokens=(4, 1024), repeats=2, ray_n=48), "tiny": dict(tokens=(2, 64), repeats=2, ray_n=4)}
GOALS = {"capture_time_ratio": 1.05, "peak_memory_ratio": 1.1, "ray_speedup": 1.6}


class HookTimer:
    """Seconds spent inside the hooks a capture registers, measured by wrapping them.

    ``capture_stats`` hands its hooks to ``bridge.hooks(fwd_hooks=...)``; this replaces that
    method on the instance with one that wraps each hook in a timer. On CPU every op runs
    synchronously, so the hooks' seconds are the capture's own work, measured directly: a
    check on the end-to-end ratio, which the load of a shared machine makes noisy.
    """

    def __init__(self, bridge) -> None:
        self.seconds = 0.0
        original = bridge.hooks

        def wrap(fn):
            def timed_hook(*args, **kwargs):
                t0 = time.perf_counter()
                try:
                    return fn(*args, **kwargs)
                finally:
                    self.seconds += time.perf_counter() - t0

            return timed_hook

        def hooks(*args, fwd_hooks=(), **kwargs):
            return original(*args, fwd_hooks=[(name, wrap(fn)) for name, fn in fwd_hooks], **kwargs)

        bridge.hooks = hooks


def capture_section(shape: dict, dtype: str, tokens: tuple[int, int], repeats: int) -> dict:
    """Time and peak-memory ratios of ``capture_stats`` over a bare forward, for one dtype."""
    t0 = time.perf_counter()
    hf, tok = build_llama(shape, "cpu", getattr(torch, dtype), max_positions=max(2048, tokens[1]))
    lm = mm.wrap(hf, tok, name=f"llama-3.2-1b-shape-{dtype}")
    build_s = time.perf_counter() - t0
    b, length = tokens
    ids = torch.randint(0, 256, (b, length), generator=torch.Generator().manual_seed(0))
    timer = HookTimer(lm.bridge)
    hook_s: list[float] = []

    def bare(x=ids):
        with torch.inference_mode():
            lm.bridge(x, return_type=None)

    def capture(x=ids):
        before = timer.seconds
        stats = mm.capture_stats(lm, x, batch_size=x.shape[0], progress=False)
        hook_s.append(timer.seconds - before)
        return stats

    short = ids[:1, :16]
    bare(short), capture(short)  # warm-up: hooks, kernels, lazy buffers; cheap
    hook_s.clear()
    rounds = interleaved({"bare": bare, "capture": capture}, repeats=repeats, memory=True)
    stats = capture()  # the result must be usable, not only fast
    finite = all(bool(torch.isfinite(v).all()) for v in stats.sumsq.values())
    per = {k: {m: [r[m] for r in rs] for m in ("wall_s", "cpu_s", "peak_bytes")} for k, rs in rounds.items()}
    paired = lambda m: statistics.median(c / b for c, b in zip(per["capture"][m], per["bare"][m], strict=True))  # noqa: E731
    bare_s, hooks = statistics.median(per["bare"]["wall_s"]), statistics.median(hook_s[:repeats])
    m_bare, m_cap = (statistics.median(per[k]["peak_bytes"]) for k in ("bare", "capture"))
    out = {
        "dtype": dtype, "tokens": b * length, "batch": [b, length], "layers": lm.info.n_layers,
        "build_s": round(build_s, 1), "rounds": repeats,
        "capture_time_ratio": round(paired("wall_s"), 4),
        "capture_cpu_time_ratio": round(paired("cpu_s"), 4),
        "capture_time_ratio_from_hooks": round((bare_s + hooks) / bare_s, 4),
        "bare_s": [round(x, 2) for x in per["bare"]["wall_s"]],
        "capture_s": [round(x, 2) for x in per["capture"]["wall_s"]],
        "hook_s": [round(x, 3) for x in hook_s[:repeats]],
        "bare_peak_mib": round(m_bare / 2**20, 1), "capture_peak_mib": round(m_cap / 2**20, 1),
        "peak_memory_ratio": round(m_cap / m_bare, 4),
        "stats_finite": finite, "n_tokens_counted": stats.n_tokens,
    }
    print(f"capture {dtype}: {json.dumps(out)}", flush=True)
    return out


def tiny_sweep(n: int):
    """The tiny sweep: two tiny random models x two tasks, top-k k=1,3 on all/late layers, two controls."""
    from massmech.studies.ablation import SweepConfig

    return SweepConfig(models=("tiny-llama", "tiny-qwen2"), tasks=("kv_lookup", "sentiment"), n=n, rules=("topk",),
                       ks=(1, 3), layer_ranges=("all", "late"), controls=("lowest", "random"))


def ray_section(n: int, workers: int = 2, threads: int = 1) -> dict:
    """``ray_speedup`` of the tiny sweep, or ``None`` with the reason when Ray cannot run it."""
    try:
        import ray
    except ImportError as err:
        return {"ray_speedup": None, "reason": f"ray is not importable ({err}): pip install 'massmech[ray]'"}
    from massmech.errors import ConfigError
    from massmech.infra.executors import resolve_executor
    from massmech.studies.ablation import run_sweep

    options = {"workers": workers, "cpus": threads}  # RayExecutor: cpus per actor = its torch threads
    try:
        executor = resolve_executor("ray", **options)
    except ConfigError as err:
        return {"ray_speedup": None, "reason": f"no ray executor in massmech: {err}"}
    except TypeError as err:
        return {"ray_speedup": None, "reason": f"the ray executor does not take {options}: {err}"}
    started = not ray.is_initialized()
    t0 = time.perf_counter()
    if started:
        ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
    init_s = time.perf_counter() - t0
    threads_before = torch.get_num_threads()
    runs: dict[int, dict] = {}
    try:
        for size in (n, 4 * n):  # two workloads: Ray's fixed cost (worker start, model loads) and its scaling
            cfg = tiny_sweep(size)
            with tempfile.TemporaryDirectory(prefix="massmech-scale-") as tmp:
                torch.set_num_threads(threads)
                per_model = {}
                for m in cfg.models:  # one model at a time, into one store: the serial time of each group
                    t0 = time.perf_counter()
                    run_sweep(dataclasses.replace(cfg, models=(m,)), Path(tmp) / f"serial-{m}", cells=Path(tmp) / "cells",
                              executor="serial", progress=False)
                    per_model[m] = time.perf_counter() - t0
                serial = run_sweep(cfg, Path(tmp) / "serial", cells=Path(tmp) / "cells", progress=False)  # from the store
                serial_s = sum(per_model.values())
                torch.set_num_threads(threads_before)
                t0 = time.perf_counter()
                distributed = run_sweep(cfg, Path(tmp) / "ray", executor=executor, progress=False)
                ray_s = time.perf_counter() - t0
            key = ["model", "task", "condition"]
            drop = [c for c in ("key",) if c in serial.columns]
            a = serial.drop(columns=drop).sort_values(key).reset_index(drop=True)
            b = distributed.drop(columns=drop).sort_values(key).reset_index(drop=True)
            runs[size] = {"serial_s": serial_s, "ray_s": ray_s, "cells": len(serial), "equal": bool(a.equals(b)),
                          "bound": serial_s / max(per_model.values()), "table": a}
        # a session (as reproduce runs every study): the n sweep again on the workers of a first run
        with tempfile.TemporaryDirectory(prefix="massmech-scale-") as tmp, executor:
            run_sweep(tiny_sweep(n), Path(tmp) / "first", executor=executor, progress=False)
            t0 = time.perf_counter()
            warm = run_sweep(tiny_sweep(n), Path(tmp) / "again", executor=executor, progress=False)
            warm_s = time.perf_counter() - t0
        warm = warm.drop(columns=[c for c in ("key",) if c in warm.columns]).sort_values(key).reset_index(drop=True)
    finally:
        torch.set_num_threads(threads_before)
        if started:
            ray.shutdown()
    small, large = runs[n], runs[4 * n]
    extra = large["ray_s"] - small["ray_s"]  # timing noise can make it <= 0 on a tiny workload: no estimate then
    marginal = (large["serial_s"] - small["serial_s"]) / extra if extra > 0 else None
    return {"ray_speedup": round(small["serial_s"] / small["ray_s"], 3), "serial_s": round(small["serial_s"], 2),
            "ray_s": round(small["ray_s"], 2), "ray_speedup_4n": round(large["serial_s"] / large["ray_s"], 3),
            "serial_s_4n": round(large["serial_s"], 2), "ray_s_4n": round(large["ray_s"], 2),
            "ray_marginal_speedup": round(marginal, 3) if marginal else None,
            "ray_fixed_s": round(small["ray_s"] - small["serial_s"] / marginal, 2) if marginal else None,
            "ray_balance_bound": round(large["bound"], 3), "ray_init_s": round(init_s, 2), "workers": workers, "threads_per_worker": threads, "serial_threads": threads,
            "cells": small["cells"], "examples_per_task": n, "executor": repr(executor),
            "ray_table_equal": small["equal"] and large["equal"] and bool(warm.equals(small["table"])),
            "ray_speedup_session": round(small["serial_s"] / warm_s, 3), "ray_session_s": round(warm_s, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=sorted(SIZES), default="1b")
    ap.add_argument("--sections", default="capture,ray", help="comma-separated subset of: capture, ray")
    ap.add_argument("--dtypes", nargs="+", default=["bfloat16", "float32"])
    ap.add_argument("--tokens", type=int, nargs=2, default=None, metavar=("B", "L"),
                    help="batch x length (default: 4 1024 at 1b, 2 64 tiny)")
    ap.add_argument("--layers", type=int, default=None, help="override the number of layers (default: the shape's)")
    ap.add_argument("--repeats", type=int, default=None, help="timed interleaved rounds (default 2)")
    ap.add_argument("--ray-n", type=int, default=None, help="examples per task of the tiny sweep (default 48; tiny: 4)")
    args = ap.parse_args()
    sections = set(args.sections.split(","))
    unknown = sections - {"capture", "ray"}
    if unknown:
        ap.error(f"unknown sections {sorted(unknown)}")
    plan = PLAN[args.size]
    shape = dict(SIZES[args.size])
    if args.layers:
        shape["num_hidden_layers"] = args.layers
    tokens = tuple(args.tokens or plan["tokens"])
    result: dict = {"size": args.size, "shape": shape, "threads": torch.get_num_threads(), "goals": GOALS,
                    "sections": sorted(sections)}
    if "capture" in sections:
        result["capture"] = {}
        for dtype in args.dtypes:
            try:
                result["capture"][dtype] = capture_section(shape, dtype, tokens, args.repeats or plan["repeats"])
            except Exception as err:  # noqa: BLE001 - one dtype failing must not hide the other's numbers
                traceback.print_exc()
                result["capture"][dtype] = {"error": f"{type(err).__name__}: {err}"}
        for name in ("capture_time_ratio", "peak_memory_ratio"):
            result[name] = {d: r.get(name) for d, r in result["capture"].items()}
    if "ray" in sections:
        try:
            result["ray"] = ray_section(args.ray_n or plan["ray_n"])
        except Exception as err:  # noqa: BLE001 - the executor is young: report, do not crash
            traceback.print_exc()
            result["ray"] = {"ray_speedup": None, "reason": f"{type(err).__name__}: {err}"}
        result["ray_speedup"] = result["ray"]["ray_speedup"]
        print(f"ray: {json.dumps(result['ray'])}", flush=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
