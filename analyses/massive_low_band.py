"""Per-layer massive Q/K/V dims and where they sit in the RoPE spectrum.

Runs the library's main job (default: SmolLM2-135M, 4,096 tokens of BBC news in 512-token
windows, lambda = 5, per-head mean) and prints one line per layer for the pre-RoPE stage:
massive counts, their share in the slower half of the pairs, and the energy in that half.
Copy and edit the config to change the study.

Usage: python analyses/massive_low_band.py [--model smollm2-135m] [--tokens 4096] [--out runs/low_band]
"""

import argparse

import pandas as pd

from massmech.studies.analyze import AnalyzeConfig, run_analyze

ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("--model", default="smollm2-135m")
ap.add_argument("--tokens", type=int, default=4096)
ap.add_argument("--lam", type=float, default=5.0)
ap.add_argument("--out", default="runs/low_band")
args = ap.parse_args()

summary = run_analyze(AnalyzeConfig(model=args.model, n_tokens=args.tokens, lam=args.lam), args.out)
layers = pd.read_parquet(f"{args.out}/layers.parquet")
pre = layers[layers.stage == "pre"].pivot(
    index="layer", columns="site", values=["n_massive", "massive_low_half_share", "low_half_energy_fraction"]
)
print(f"{summary['model']}, {summary['n_tokens']} tokens, lambda={args.lam:g}, pre-RoPE")
print(f"{'layer':>5} | {'Q massive':>9} {'in low half':>11} {'energy':>7} | {'K massive':>9} {'in low half':>11} {'energy':>7} | {'V massive':>9}")
for layer, r in pre.iterrows():
    print(
        f"{layer:5d} | {r[('n_massive', 'q')]:9.0f} {r[('massive_low_half_share', 'q')]:11.0%} {r[('low_half_energy_fraction', 'q')]:7.0%}"
        f" | {r[('n_massive', 'k')]:9.0f} {r[('massive_low_half_share', 'k')]:11.0%} {r[('low_half_energy_fraction', 'k')]:7.0%}"
        f" | {r[('n_massive', 'v')]:9.0f}"
    )
for site in ("q", "k", "v"):
    print(f"{site}.pre", summary["by_stage"][f"{site}.pre"])
