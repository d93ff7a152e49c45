"""KV-cache quantization vs massive values, by perplexity: python analyses/kv_quant_perplexity.py [--model M].

Post-RoPE keys are fake-quantized per token, per channel (KIVI), or per token with the massive
K dims kept in full precision (massive-aware). Values are quantized per token in every case.
The quantized K/V are applied to every position in one forward pass (``kv_hooks``), as the
later tokens would read them back from a cache. The massive K dims (λ rule, per head, post-RoPE)
come from calibration windows disjoint from the evaluation windows.

Bits per cached K value count the fp16 scale and offset of every group and the fp16 kept dims.
"""

from __future__ import annotations

import argparse

import pandas as pd
import torch

import massmech as mm
from massmech.corpus import default_corpus
from massmech.evaluate import perplexity
from massmech.quantize import SCALE_BITS, kv_hooks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default=mm.DEFAULT_MODEL)
    ap.add_argument("--lam", type=float, default=5.0)
    ap.add_argument("--out", help="also write the table to this CSV")
    args = ap.parse_args()
    torch.manual_seed(0)
    model = mm.load_model(args.model)
    windows = default_corpus(model, n_tokens=6144, seq_len=512)
    calib, held = windows[:4], windows[4:]
    stats = mm.capture_stats(model, calib, sites=("k",), stages=("post",), progress=False)
    m = stats.norm("k", "post")  # [layer, kv_head, d_head]
    keep = m > args.lam * m.mean(-1, keepdim=True)
    info = model.info
    n_tok = sum(map(len, held)) / len(held)
    rows = [{"method": "fp32", "bits": 32, "k_bits_per_value": 32.0} | perplexity(model, held)]
    for bits in (8, 4, 2):
        for method, axis, kept in (("per-token", "token", None), ("per-channel", "channel", None),
                                   ("massive-aware", "token", keep)):
            share = float(kept.float().mean()) if kept is not None else 0.0
            overhead = 2 * SCALE_BITS / (info.d_head if axis == "token" else n_tok)  # scale + offset per group
            k_bits = (1 - share) * bits + share * 16 + overhead
            with model.bridge.hooks(fwd_hooks=kv_hooks(model, bits, key_axis=axis, value_axis="token", keep_k=kept)):
                res = perplexity(model, held, batch_size=1)  # one window per pass: no padding in a channel's range
            rows.append({"method": method, "bits": bits, "k_bits_per_value": round(k_bits, 3)} | res)
            print(rows[-1], flush=True)
    table = pd.DataFrame(rows)
    print(f"\n{info.name}: {int(keep.sum())} massive K dims of {keep.numel()} ({keep.float().mean():.1%}), "
          f"perplexity on {table.n_tokens.iloc[0]} held-out tokens\n")
    print(table.to_string(index=False))
    if args.out:
        table.to_csv(args.out, index=False)


if __name__ == "__main__":
    main()
