"""Print the twins study as Markdown tables: python analyses/twins_report.py [--out runs/twins/demo].

Reads a finished twins run (``massmech reproduce --only twins`` or ``massmech twins --preset demo --seeds 1,2 --out runs/twins/demo``).
"""

from __future__ import annotations

import argparse

import pandas as pd

from massmech.studies.twins.study import load_tables


def md(df: pd.DataFrame, floatfmt: str = ".2f") -> str:
    cols = list(df.columns)
    lines = ["| " + " | ".join(map(str, cols)) + " |", "|" + "---|" * len(cols)]
    for row in df.itertuples(index=False):
        lines.append("| " + " | ".join(f"{v:{floatfmt}}" if isinstance(v, float) else str(v) for v in row) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="runs/twins/demo")
    args = ap.parse_args()
    try:
        t = load_tables(args.out)
    except FileNotFoundError:
        raise SystemExit(f"{args.out} has no finished twins analysis: `massmech reproduce --only twins` makes runs/twins/demo") from None
    traj, scores = t["trajectory"], t["scores"]
    n_layers = int(traj.layer.max()) + 1
    late = traj[traj.layer >= n_layers // 2]

    print("## Largest per-head max/mean of M, later half of the layers, over training\n")
    twins = late[late.variant == late.mechanism]
    wide = twins.groupby(["step", "mechanism", "site"]).max_ratio.max().unstack(["mechanism", "site"])
    wide.columns = [f"{m} {s.upper()}" for m, s in wide.columns]
    print(md(wide.reset_index()))

    print("\n## Massive dims (lambda rule, all layers) over training\n")
    count = traj[traj.variant == traj.mechanism].groupby(["step", "mechanism", "site"]).n_massive.sum()
    count = count.unstack(["mechanism", "site"])
    count.columns = [f"{m} {s.upper()}" for m, s in count.columns]
    print(md(count.reset_index(), "d"))

    print("\n## Final checkpoint, per layer: max/mean of M (largest head) and slow-half energy share\n")
    last = traj[traj.step == traj.groupby("variant").step.transform("max")]
    per = last.pivot_table(index=["variant", "layer"], columns="site", values=["max_ratio", "slow_half_share"])
    per.columns = [f"{a} {b.upper()}" for a, b in per.columns]
    print(md(per.reset_index()))

    print("\n## Wavelength of the peak pair / training context (RoPE variants, later layers, final)\n")
    w = t["wavelength"].pivot_table(index=["variant", "context", "rope_theta", "layer"], columns="site",
                                    values=["peak_pair", "peak_wavelength_over_context", "centroid_wavelength_over_context"])
    w.columns = [f"{a} {b.upper()}" for a, b in w.columns]
    print(md(w.reset_index()))

    print("\n## Scores at the final checkpoint (95% CI)\n")
    s = scores[scores.step == scores.groupby("variant").step.transform("max")]
    s = s.assign(cell=[f"{v:.3f} [{lo:.3f}, {hi:.3f}]" for v, lo, hi in zip(s.value, s.ci_low, s.ci_high, strict=True)])
    print(md(s.pivot(index="variant", columns="metric", values="cell").reset_index()))

    print("\n## Scores over training (twins)\n")
    s = scores[scores.variant == scores.mechanism].pivot_table(index=["step"], columns=["mechanism", "metric"], values="value")
    s.columns = [f"{m} {x}" for m, x in s.columns]
    print(md(s.reset_index(), ".3f"))

    d = t["disruption"]
    print(f"\n## Disruption of {d.variant.iloc[0]} (top-{int(d.k.iloc[0])} Q/K dims per head -> sequence mean)\n")
    d = d.assign(cell=[
        f"{v:.3f}" + ("" if pd.isna(dl) else f" ({dl:+.3f} [{lo:+.3f}, {hi:+.3f}])")
        for v, dl, lo, hi in zip(d.value, d.delta, d.delta_ci_low, d.delta_ci_high, strict=True)
    ])
    print("value (paired change from the baseline [95% CI])\n")
    print(md(d.pivot(index="condition", columns="metric", values="cell").reset_index()))


if __name__ == "__main__":
    main()
