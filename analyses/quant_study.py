"""The quantization study on one model: python analyses/quant_study.py [--model M] [--grid full|core|weights|kv] [--n N].

Runs (or resumes) every variant of the grid (``massmech.studies.quant.study.GRIDS``) into
``runs/quant/<model>`` (``results.parquet``: one row per variant x measure; see
:func:`massmech.studies.quant.study.run_quant_study`) and prints one row per variant: bits, perplexity,
massive-set recall and relative errors, task accuracies. Quantized weights are cached under
``~/.cache/massmech/quantized``, so a rerun pays no calibration. ``paper_figures/fig_quant_*.py``
draw the figures from the same folder.
"""

from __future__ import annotations

import argparse

import pandas as pd

from massmech.report.tables import quant_markdown
from massmech.studies.presets import preset
from massmech.studies.quant.config import DEFAULT_TASKS, GRIDS, STUDY_GRID
from massmech.studies.quant.study import run_quant_study, wide


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--grid", choices=sorted(GRIDS), help="default: full for SmolLM2, core for Gemma-3")
    ap.add_argument("--n", type=int, default=40, help="examples per task (default 40)")
    ap.add_argument("--tasks", default=",".join(DEFAULT_TASKS))
    ap.add_argument("--out", help="default runs/quant/<model>")
    ap.add_argument("--calib-tokens", type=int, help="calibration tokens (default: the config's)")
    ap.add_argument("--markdown", action="store_true", help="print the README's tables instead")
    args = ap.parse_args()
    grid = args.grid or STUDY_GRID.get(args.model, "full")
    sizes = {"calib_tokens": args.calib_tokens} if args.calib_tokens else {}
    cfg = preset("quant", grid, model=args.model, tasks=tuple(args.tasks.split(",")), n=args.n, **sizes)
    table = run_quant_study(cfg, args.out or f"runs/quant/{args.model}")
    pd.set_option("display.width", 250)
    pd.set_option("display.max_columns", 40)
    w = wide(table)
    if args.markdown:
        print(quant_markdown(table))
        return
    print(f"\n{args.model} (base: {w.base.iloc[0]})\n")
    cols = ["variant", "bits_per_value", "weight_rel_error", "perplexity", *[c for c in w if c.startswith(("recall_", "rel_error_"))],
            *cfg.tasks, "parametric_mean", "contextual_mean"]
    print(w[[c for c in cols if c in w]].round(3).T.to_string(header=False))


if __name__ == "__main__":
    main()
