"""Where Q/K start to concentrate energy in slow RoPE pairs beyond V: the robust emergence layer.

Captures Q, K, V (pre-RoPE) on BBC news windows in 8 chunks, then per layer: the concentration
(share of a head's energy in pairs whose wavelength exceeds factor x C, divided by the share of
pairs in that band; 1 = none), Q and K minus V with a bootstrap interval over chunks, and the
emergence layer (the first layer from which Q or K stays significantly above V) at band factors
0.5, 1 and 2: its sensitivity. See massmech.core.emergence.

Usage: python analyses/emergence.py [--model smollm2-135m] [--tokens 16384] [--seq-len 512]
"""

import argparse

from massmech.core.corpus import bbc_news, token_windows
from massmech.core.emergence import emergence_from_windows
from massmech.core.loading import load_model

ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("--model", default="smollm2-135m")
ap.add_argument("--tokens", type=int, default=16384)
ap.add_argument("--seq-len", type=int, default=512)
ap.add_argument("--chunks", type=int, default=8)
args = ap.parse_args()

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
