"""Evaluation speed: teacher-forced exact match vs generation, folded conditions vs sequential passes.

Both comparisons run on the same examples in one process (SmolLM2-135M by default):

1. **Teacher-forced vs generate.** Greedy exact match decided by one teacher-forced forward
   pass per batch (:func:`massmech.causal.evaluate.evaluate`) against token-by-token greedy
   generation with a KV cache (:func:`massmech.causal.evaluate.generate_exact`), both batched the same
   way, under the baseline and a massive-value disruption. Budgets: ``0`` generates only as
   many new tokens as the longest gold answer of its batch, the cheapest generation that can
   decide the verdict (the reported one); ``N`` runs a fixed budget, as generate-then-parse
   evaluators do. Reports the speedup and the share of (example, condition) verdicts on which
   both paths agree. On a CPU the prompt's forward pass dominates both paths, so the speedup is
   small; it grows with the budget and on accelerators, where decode steps are latency-bound.
2. **Folded vs sequential conditions.** k conditions (baseline, massive, two controls) of B
   examples in one pass of k x B rows, against k passes of B rows. Reported for several B.
3. **Shared prompt passes** (issue 28, ``--sections share``): ``rank`` scoring of kv_lookup (8
   options) and city_country_0shot (5) under the baseline, the massive arm and its matched
   control, each option read after a shared prompt pass (:mod:`massmech.causal.choice`) against
   one sequence per option: ``shared_prompt_speedup``, ``shared_verdict_agreement`` and the largest
   log-probability difference.
4. **Issue 16's ratios** on the same examples and conditions (measured by
   ``_harness.eval_ratios``, shared with ``bench/gpu_check.py``): ``prefill_efficiency`` = a bare
   batched forward of the same rows ÷ ``evaluate`` (goal >= 0.85); ``upstream_style_speedup`` =
   per-example batch-size-1 greedy generation of up to 32 new tokens with the disruption at
   every step (how the paper's code evaluates) ÷ ``evaluate`` (goal >= 20), with
   ``upstream_verdict_agreement`` between the two greedy paths (goal >= 0.98).

Timings are medians of ``--repeats`` rounds on a warm model (part 3: best of ``--repeats``; its
generation path once). The machine may be shared: run it alone. ``--sections`` runs a subset
(``generate,fold,share,ratios``). The last line is one JSON object with ``teacher_forced_speedup``,
``verdict_agreement`` and ``batched_conditions_ratio`` (at ``--fold-examples``) from parts 1-2,
``shared_prompt_speedup`` and ``shared_verdict_agreement`` from part 3, and ``prefill_efficiency``,
``upstream_style_speedup`` and ``upstream_verdict_agreement`` (details under ``eval_ratios``) from
part 4; a part not run is absent.

    python bench/eval_speed.py [--model smollm2-135m] [--n 100] [--sections generate,fold,share,ratios]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from _harness import eval_ratios

import massmech as mm
from massmech.causal.disruption import Disruption
from massmech.causal.evaluate import evaluate, generate_exact, score
from massmech.causal.tasks.builtin import get_task

SECTIONS = {"generate", "fold", "share", "ratios"}


def timed(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--tasks", nargs="+", default=["country_capital", "kv_lookup", "passkey"])
    ap.add_argument("--n", type=int, default=40, help="examples per task")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--gen-tokens", type=int, nargs="+", default=[0, 32],
                    help="generation budgets; 0: the longest gold answer per batch (the first is reported)")
    ap.add_argument("--fold-examples", type=int, nargs="+", default=[4, 1, 16], help="B values; the first is reported")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--topk", type=int, default=0, help="disrupt the top-k dims per head instead of lambda=5")
    ap.add_argument("--sections", default="generate,fold,share,ratios",
                    help="comma-separated subset of: generate, fold, share, ratios")
    ap.add_argument("--upstream-tokens", type=int, default=32, help="new tokens of the upstream-style generation")
    args = ap.parse_args()
    sections = set(args.sections.split(","))
    if sections - SECTIONS:
        ap.error(f"unknown sections {sorted(sections - SECTIONS)}")

    torch.manual_seed(0)
    model = mm.load_model(args.model)
    massive = Disruption(target="qk", stage="pre", rule="topk", k=args.topk) if args.topk else Disruption(lam=5)
    conds = {"baseline": None, "massive": massive}
    examples = [e for t in args.tasks for e in get_task(t).examples(args.n, seed=0)]
    print(f"{model.info.name}: {len(examples)} exact-match examples from {args.tasks}, conditions {list(conds)}")

    result: dict = {"model": model.info.name, "threads": torch.get_num_threads(), "examples": len(examples)}
    if "generate" in sections:
        result |= _generate(model, examples, conds, args)
    if "fold" in sections:
        result |= _fold(model, massive, args)
    if "share" in sections:
        result |= _share(model, massive, args)
    if "ratios" in sections:
        r = eval_ratios(model, examples, conds, batch_size=args.batch_size, max_new_tokens=args.upstream_tokens,
                        repeats=args.repeats)
        print(f"prefill efficiency {r['prefill_efficiency']:.3f} (bare forward {r['bare_forward_s']:.2f} s, evaluate "
              f"{r['evaluate_s']:.2f} s); upstream-style speedup {r['upstream_style_speedup']:.1f}x (generate "
              f"{r['upstream_generate_s']:.1f} s, evaluate {r['evaluate_every_step_s']:.2f} s), agreement "
              f"{r['verdict_agreement']:.4f}")
        result |= {"prefill_efficiency": r["prefill_efficiency"], "upstream_style_speedup": r["upstream_style_speedup"],
                   "upstream_verdict_agreement": r["verdict_agreement"], "eval_ratios": r}
    print(json.dumps(result))


def _generate(model, examples, conds, args) -> dict:
    """Part 1: teacher-forced ``evaluate`` against batched greedy generation, per budget."""
    evaluate(model, examples[:4], conds, progress=False)  # warm-up
    t_tf, tf = timed(lambda: evaluate(model, examples, conds, batch_size=args.batch_size, progress=False), args.repeats)
    budgets = {}
    for budget in args.gen_tokens:
        t_gen, gen = timed(
            lambda budget=budget: generate_exact(model, examples, conds, batch_size=args.batch_size,
                                                 max_new_tokens=budget or None, progress=False),
            1,  # generation is the slow path: one round
        )
        key = ["condition", "uid"]
        merged = tf.merge(gen, on=key, suffixes=("_tf", "_gen"))
        assert len(merged) == len(tf) == len(gen)
        agreement = float((merged.correct_tf == merged.correct_gen).mean())
        for name in conds:
            m = merged[merged.condition == name]
            print(f"  {name:9s} accuracy teacher-forced {m.correct_tf.mean():.3f}  generate {m.correct_gen.mean():.3f}  "
                  f"agree {(m.correct_tf == m.correct_gen).mean():.3f}")
        label = budget or "gold length"
        print(f"budget {label}: teacher-forced {t_tf:.1f} s  generate {t_gen:.1f} s  speedup {t_gen / t_tf:.1f}x  "
              f"agreement {agreement:.4f}")
        budgets[str(label)] = {"speedup": round(t_gen / t_tf, 2), "agreement": round(agreement, 4),
                               "generate_s": round(t_gen, 2), "n_verdicts": len(merged)}
    first = budgets[next(iter(budgets))]
    return {"teacher_forced_speedup": first["speedup"], "verdict_agreement": first["agreement"],
            "generate_by_budget": budgets, "teacher_forced_s": round(t_tf, 2)}


def _share(model, massive, args) -> dict:
    """Part 3: rank scoring with one prompt pass per (example, condition) against one sequence per option."""
    conds = {"baseline": None, "massive": massive, "matched": massive.as_control("matched")}
    tasks, one_s, shared_s, agree, total, worst = {}, 0.0, 0.0, 0, 0, 0.0
    for name in ("kv_lookup", "city_country_0shot"):
        task = get_task(name)
        t_one, one = timed(lambda task=task: score(model, task, conds, scorer="rank", n=args.n, share_prompt=False,
                                                   batch_size=args.batch_size, progress=False), args.repeats)
        t_sh, sh = timed(lambda task=task: score(model, task, conds, scorer="rank", n=args.n,
                                                 batch_size=args.batch_size, progress=False), args.repeats)
        same = int((one.correct.to_numpy() == sh.correct.to_numpy()).sum())
        diff = max(abs(a - b) for x, y in zip(one.logprobs, sh.logprobs, strict=True) for a, b in zip(x, y, strict=True))
        print(f"share {name}: one sequence per option {t_one:.1f} s, shared prompt {t_sh:.1f} s, "
              f"speedup {t_one / t_sh:.2f}x, verdicts equal {same}/{len(one)}, max |d logprob| {diff:.1e}")
        tasks[name] = {"one_s": round(t_one, 2), "shared_s": round(t_sh, 2), "speedup": round(t_one / t_sh, 2),
                       "verdicts_equal": same, "n_verdicts": len(one), "max_logprob_diff": float(f"{diff:.2e}")}
        one_s, shared_s, agree, total, worst = one_s + t_one, shared_s + t_sh, agree + same, total + len(one), max(worst, diff)
    return {"shared_prompt_speedup": round(one_s / shared_s, 2), "shared_verdict_agreement": round(agree / total, 4),
            "shared_max_logprob_diff": float(f"{worst:.2e}"), "shared_by_task": tasks}


def _fold(model, massive, args) -> dict:
    """Part 2: k conditions folded into shared passes against k sequential passes."""
    four = {"baseline": None, "massive": massive, "lowest": massive.as_control("lowest"),
            "random": massive.as_control("random")}
    k = len(four)
    ratios = {}
    pool = get_task("country_capital").examples(64, seed=1)
    for b in args.fold_examples:
        exs = pool[: max(b, 1) * 4]  # 4 batches of B examples

        def folded(exs=exs, b=b):
            return evaluate(model, exs, four, batch_size=k * b, progress=False)

        def sequential(exs=exs, b=b):
            return evaluate(model, exs, four, batch_size=b, fold=False, progress=False)

        folded()
        t_f, a = timed(folded, args.repeats)
        t_s, s = timed(sequential, args.repeats)
        assert a.equals(s), "folded and sequential passes disagree"
        ratios[b] = t_f / t_s
        print(f"  B={b:2d}: {k} conditions folded into passes of {k * b} rows {t_f:.2f} s, "
              f"{k} sequential passes of {b} rows {t_s:.2f} s, ratio {ratios[b]:.3f}")
    return {"batched_conditions_ratio": round(ratios[args.fold_examples[0]], 3),
            "batched_conditions_ratio_by_B": {str(b): round(r, 3) for b, r in ratios.items()}}

if __name__ == "__main__":
    main()
