"""Where Q/K start to concentrate energy in slow RoPE pairs beyond V: the robust emergence layer.

Captures Q, K, V (pre-RoPE) on BBC news windows in 8 chunks, then per layer: the concentration
(share of a head's energy in pairs whose wavelength exceeds factor x C, divided by the share of
pairs in that band; 1 = none), Q and K minus V with a bootstrap interval over chunks, and the
emergence layer (the first layer from which Q or K stays significantly above V) at band factors
0.5, 1 and 2: its sensitivity. See massmech.core.emergence.

Writes runs/emergence/<model>/ (layers.parquet/.csv, summary.json, manifest.json; replaced on
every call), which the claim ledger (massmech report --ledger runs) reads.

Usage: python analyses/emergence.py [--model smollm2-135m] [--tokens 16384] [--seq-len 512] [--out DIR]
"""

import argparse

from massmech.core.corpus import bbc_news, token_windows
from massmech.core.emergence import emergence_from_windows
from massmech.core.loading import load_model
from massmech.infra.io import write_json
from massmech.infra.runs import atomic_run_dir, check_out, manifest

ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("--model", default="smollm2-135m")
ap.add_argument("--tokens", type=int, default=16384)
ap.add_argument("--seq-len", type=int, default=512)
ap.add_argument("--chunks", type=int, default=8)
ap.add_argument("--out", help="run folder (default runs/emergence/<model>)")
args = ap.parse_args()
out = args.out or f"runs/emergence/{args.model}"
check_out(out, "emergence", overwrite=True)  # refuse a folder massmech did not write, before any work

model = load_model(args.model)
texts = bbc_news()
windows = [w for w in token_windows(model, texts, n_tokens=args.tokens, seq_len=args.seq_len, chunk=True)
           if len(w) == args.seq_len]  # full-length windows only: one context length C
em = emergence_from_windows(model, windows, n_chunks=args.chunks, progress=True)
print(f"{model.info.name}: {len(windows)} windows of {args.seq_len} tokens in {args.chunks} chunks; {em!r}")
for factor, rows in em.layers.groupby("factor"):
    print(f"\nband: wavelength > {factor:g} x C  (emergence: Q {em.summary['q'][factor]}, K {em.summary['k'][factor]})")
    wide = rows.pivot(index="layer", columns="site", values=["concentration", "minus_v_low", "minus_v_high"])
    wide.columns = [f"{site}_{col}" for col, site in wide.columns]
    v = rows[rows.site == "q"].set_index("layer")[["v_concentration", "band_pairs"]]
    print(wide.join(v).round(2).to_string())

with atomic_run_dir(out, "emergence", overwrite=True) as tmp:
    em.layers.to_parquet(tmp / "layers.parquet", index=False)
    em.layers.to_csv(tmp / "layers.csv", index=False)
    write_json(tmp / "summary.json", {"model": model.info.name, "n_layers": model.info.n_layers,
                                      "windows": len(windows), "seq_len": args.seq_len,
                                      "emergence": {s: {str(f): v for f, v in d.items()} for s, d in em.summary.items()},
                                      "params": em.params})
    write_json(tmp / "manifest.json", manifest(vars(args), model_info=model.info_dict(), seed=0))
print(f"-> {out}")
