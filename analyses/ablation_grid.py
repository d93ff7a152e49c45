"""Ablation curves on one model: accuracy against k, the disrupted layer range, or removed variance.

``--preset k``: the top-k dims per head (k = 1, 4, 16) replaced by their prompt mean, against
the lowest-norm control with the same count. ``--preset layers``: the lambda = 5 massive dims
disrupted in all layers, or only the early, middle or late third. Three tasks (country_capital,
kv_lookup, passkey), n = 100 each. Resumable; finished cells are shared with the other
ablation scripts and with paper_figures/fig_ablation_k.py / fig_ablation_layers.py.

``--preset dose``: the dose-response: top-k (k = 1, 2, 4, 8, 16) against the control that removes
the same token variance per head with random other dims; draws accuracy against removed variance
for both arms into OUT/figures/dose_response.{pdf,png}.

    python analyses/ablation_grid.py --preset k [--model smollm2-135m] [--n 100]
    python analyses/ablation_grid.py --preset layers
    python analyses/ablation_grid.py --preset dose
"""

from __future__ import annotations

import argparse

from massmech.studies.ablation import run_sweep
from massmech.studies.presets import preset


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", required=True, choices=["k", "layers", "dose"])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--lam", type=float, default=5.0, help="lambda of the massive rule (preset layers)")
    ap.add_argument("--ks", help="comma-separated k values (presets k and dose; default 1,4,16 and 1,2,4,8,16)")
    ap.add_argument("--task", action="append", help="task (repeatable; default country_capital, kv_lookup, passkey)")
    ap.add_argument("--cells", default="runs/sweeps/cells", help="cell store shared by all sweeps")
    ap.add_argument("--out", help="results folder (default runs/sweeps/<preset>)")
    args = ap.parse_args()
    given = {"ks": tuple(int(k) for k in args.ks.split(","))} if args.ks else {}
    given |= {"tasks": tuple(args.task)} if args.task else {}
    cfg = preset("sweep", args.preset, models=(args.model,), n=args.n, lams=(args.lam,), **given)
    out = args.out or f"runs/sweeps/{args.preset}"
    t = run_sweep(cfg, out, cells=args.cells)
    if args.preset == "dose":
        from massmech.report.plotting import dose_response

        dose_response(t, out=f"{out}/figures/dose_response")
        print(t[t.role != "baseline"][["task", "k", "role", "control", "accuracy", "removed_variance", "n"]]
              .round(4).to_string(index=False))
        return
    t = t.assign(what=t.role.where(t.control.isna(), "ctrl-" + t.control.fillna("")))
    index = ["task", "k" if args.preset == "k" else "layer_range"]
    print(t[t.role != "baseline"].pivot_table(index=index, columns="what", values="accuracy").round(3))
    print(t[t.role == "baseline"][["task", "accuracy", "ci_low", "ci_high", "n"]].to_string(index=False))


if __name__ == "__main__":
    main()
