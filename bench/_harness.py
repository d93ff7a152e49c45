"""Measuring code shared by the benchmarks (not a benchmark itself: it prints nothing).

* :func:`build_llama`: a random-init Llama of a given shape, built directly on a device in a dtype
  (no weights travel), with the byte-level tokenizer of :mod:`massmech.core.tiny`.
* :func:`timed`, :func:`measure` and :func:`interleaved`: wall-clock (synchronized on CUDA) and
  process CPU time, optionally with the peak memory of the same call.
* :func:`peak_bytes`: peak bytes of live tensors allocated while a function runs, above what was
  live before: on CUDA from the caching allocator's statistics, on CPU from the allocator events
  of the torch profiler (so both measure the same thing, independent of malloc's heap reuse).
* :func:`eval_ratios`: ``prefill_efficiency``, ``upstream_style_speedup`` and
  ``verdict_agreement`` (issue 16), used by ``bench/eval_speed.py`` and ``bench/gpu_check.py``.

The scripts import it as a sibling module (``python bench/X.py`` puts ``bench/`` on the path).
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch


def sync(device: str) -> None:
    """Wait for the device's queued work (a no-op on CPU)."""
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn: Callable[[], Any], device: str = "cpu", repeats: int = 1) -> tuple[float, Any]:
    """Best-of-``repeats`` wall seconds of ``fn()`` and its last result."""
    best, out = float("inf"), None
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        out = fn()
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return best, out


def measure(fn: Callable[[], Any], device: str = "cpu", memory: bool = False) -> dict:
    """One call of ``fn``: ``wall_s``, ``cpu_s`` (this process, all threads) and, with ``memory``,
    ``peak_bytes`` (see :func:`peak_bytes`; on CPU the call runs under the torch profiler, whose
    per-op cost, microseconds, is negligible against a forward pass of a real model)."""
    if not memory:
        sync(device)
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        sync(device)
        return {"wall_s": time.perf_counter() - w0, "cpu_s": time.process_time() - c0}
    out: dict = {}

    def timed_fn() -> None:
        out.update(measure(fn, device))

    out["peak_bytes"] = peak_bytes(timed_fn, device)
    return out


def interleaved(fns: Mapping[str, Callable[[], Any]], device: str = "cpu", repeats: int = 3,
                memory: bool = False) -> dict[str, list[dict]]:
    """``repeats`` interleaved rounds (A, B, A, B, ...) of :func:`measure` for each function.

    Interleaving spreads a shared machine's changing load over every function alike, and pairs
    each call with its neighbours (compare round by round). No warm-up is run here.

    Returns:
        Name -> one :func:`measure` dict per round.
    """
    out: dict[str, list[dict]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            out[name].append(measure(fn, device, memory))
    return out


def peak_bytes(fn: Callable[[], Any], device: str = "cpu") -> int:
    """Peak bytes of tensors live while ``fn()`` runs, above those live when it starts.

    On CUDA: ``torch.cuda.max_memory_allocated`` minus ``memory_allocated`` before. On CPU: every
    allocation and free of the CPU allocator while ``fn`` runs is recorded by the torch profiler
    (``profile_memory=True``: one ``[memory]`` event per allocation, +bytes, and per free, -bytes);
    the peak of their running sum in time order is the most memory ``fn``'s tensors held at once.
    Tensors already live (the model's weights) do not count; what ``fn`` returns is freed at the
    end (it is not kept). Process RSS is not used: glibc keeps freed blocks in its heap and reuses
    them, which hides or inflates peaks depending on what ran before.
    """
    if str(device).startswith("cuda"):
        sync(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        sync(device)
        return torch.cuda.max_memory_allocated() - base
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]" and e.device_type().name == "CPU"]
    events.sort(key=lambda e: e.start_ns())
    live = best = 0
    for e in events:
        live += e.nbytes()
        best = max(best, live)
    return best


def build_llama(shape: Mapping[str, int], device: str = "cpu", dtype: torch.dtype = torch.float32,
                *, rope_theta: float = 500_000.0, max_positions: int = 8192, seed: int = 0) -> tuple[Any, Any]:
    """A random-init ``LlamaForCausalLM`` of ``shape`` (LlamaConfig fields) built on ``device`` in
    ``dtype``, in eval mode, and the byte-level tokenizer (vocabulary 259)."""
    import transformers as tf

    from massmech.core.tiny import byte_tokenizer_dir

    tok = tf.PreTrainedTokenizerFast.from_pretrained(byte_tokenizer_dir())
    cfg = tf.LlamaConfig(vocab_size=len(tok), rope_theta=rope_theta, max_position_embeddings=max_positions,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                         **shape)
    torch.manual_seed(seed)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            hf = tf.LlamaForCausalLM(cfg)
    finally:
        torch.set_default_dtype(default)
    return hf.eval(), tok


def _every_step(d: Any) -> Any:
    return None if d is None else dataclasses.replace(d, kv_cache="every_step")


def eval_ratios(lm: Any, examples: Sequence[Any], conditions: Mapping[str, Any], *, batch_size: int = 16,
                max_new_tokens: int = 32, device: str = "cpu", repeats: int = 1) -> dict:
    """The evaluation ratios of issue 16 on exact-match ``examples`` under ``conditions``.

    * ``prefill_efficiency`` = time of a bare batched forward ÷ time of
      :func:`massmech.causal.evaluate.evaluate`. The bare forward runs the same rows (prompt +
      gold answer, one per example × condition), sorted and batched the way ``evaluate`` batches
      them, through the model's body (the bridge's wrapped Hugging Face model up to the final
      norm) with no intervention and no unembedding: the least any scorer must compute (goal >= 0.85).
    * ``upstream_style_speedup`` = time of per-(example, condition) greedy generation at batch
      size 1 of ``max_new_tokens`` new tokens with each disruption applied at every decode step
      (``kv_cache="every_step"``, :func:`massmech.causal.evaluate.generate_exact`), the way the
      paper's code evaluates, ÷ time of ``evaluate`` of the same examples and (every-step)
      conditions (goal >= 20).
    * ``verdict_agreement``: share of (example, condition) verdicts on which those two greedy
      paths agree (goal >= 0.98).

    After one warm-up call of each (on all the examples: long rows allocate on first use), the bare
    forward, ``evaluate`` and the every-step ``evaluate`` run in ``repeats`` interleaved rounds;
    ``prefill_efficiency`` is the median over rounds of each round's bare ÷ ``evaluate`` (neighbours
    share the machine's load), the every-step ``evaluate`` time is the median over rounds. The
    generation path runs once (it is the slow one), so on a shared machine a change of load during
    it moves the wall-clock speedup; ``upstream_style_speedup_cpu``, the same ratio on this
    process's CPU time, is less exposed to other jobs.

    Returns:
        The three ratios, the seconds behind them, ``n_verdicts`` and the per-condition accuracy.
    """
    from massmech.causal.evaluate import encode, evaluate, generate_exact
    from massmech.core.bridge import hf_model

    seqs = [p + a[0] for p, a in (encode(lm, ex) for ex in examples)] * len(conditions)
    seqs.sort(key=len, reverse=True)  # evaluate's order: longest first, so padding is the same
    pad = lm.tokenizer.pad_token_id or 0
    body = hf_model(lm).base_model
    step = {name: _every_step(d) for name, d in conditions.items()}
    tables: dict[str, Any] = {}

    def bare() -> None:
        with torch.inference_mode():
            for i in range(0, len(seqs), batch_size):
                chunk = seqs[i:i + batch_size]
                width = max(map(len, chunk))
                x = torch.full((len(chunk), width), pad, dtype=torch.long)
                mask = torch.zeros_like(x)
                for r, row in enumerate(chunk):
                    x[r, :len(row)], mask[r, :len(row)] = torch.tensor(row), 1
                body(input_ids=x.to(device), attention_mask=mask.to(device))

    def scored(name: str, conds: Mapping[str, Any]) -> Callable[[], None]:
        def run() -> None:
            tables[name] = evaluate(lm, examples, conds, batch_size=batch_size, progress=False)

        return run

    fns = {"bare": bare, "evaluate": scored("evaluate", conditions), "every_step": scored("every_step", step)}
    for fn in fns.values():
        fn()  # warm-up
    rounds = interleaved(fns, device, repeats)
    wall = {name: [r["wall_s"] for r in rs] for name, rs in rounds.items()}
    efficiency = statistics.median(b / e for b, e in zip(wall["bare"], wall["evaluate"], strict=True))
    t_bare, t_eval, t_step = (statistics.median(wall[k]) for k in ("bare", "evaluate", "every_step"))
    tf_rows, tf_step = tables["evaluate"], tables["every_step"]
    gen_out: dict[str, Any] = {}
    gen_t = measure(lambda: gen_out.update(table=generate_exact(lm, examples, step, batch_size=1,
                                                                max_new_tokens=max_new_tokens, progress=False)), device)
    t_gen, gen = gen_t["wall_s"], gen_out["table"]
    cpu_step = statistics.median(r["cpu_s"] for r in rounds["every_step"])
    merged = tf_step.merge(gen, on=["condition", "uid"], suffixes=("_tf", "_gen"))
    if not len(merged) == len(tf_step) == len(gen):
        raise RuntimeError("the teacher-forced and generated verdicts do not cover the same rows")
    return {
        "prefill_efficiency": round(efficiency, 3),
        "upstream_style_speedup": round(t_gen / t_step, 2),
        "upstream_style_speedup_cpu": round(gen_t["cpu_s"] / cpu_step, 2),
        "verdict_agreement": round(float((merged.correct_tf == merged.correct_gen).mean()), 4),
        "n_verdicts": len(merged), "examples": len(examples), "conditions": len(conditions),
        "bare_forward_s": round(t_bare, 3), "evaluate_s": round(t_eval, 3),
        "evaluate_every_step_s": round(t_step, 3), "upstream_generate_s": round(t_gen, 3),
        "max_new_tokens": max_new_tokens, "rounds": repeats,
        "accuracy": {c: round(float(g.correct.mean()), 3) for c, g in tf_rows.groupby("condition")},
    }
