"""Peak memory of the quant study's perplexity check, against holding the whole batch's logits.

Perplexity (:func:`massmech.causal.perplexity.perplexity`) unembeds one row at a time
(:func:`massmech.core.bridge.next_token_nll`). The other way, one forward pass's logits for the
whole batch and their log-softmax, holds ``2 x batch x seq x vocab`` fp32 values: 8.6 GB for
Gemma-3's 262k vocabulary at 8 x 512 tokens, which got two sweeps killed for memory on a 24 GB
machine (2026-12-06). Both are measured on the same random windows, with
:func:`_harness.peak_bytes` (tensors live during the call, the model's weights excluded).

Goal: ``peak_ratio`` (row by row over whole batch) <= 0.25 at batch 8, with the same NLL
(``nll_rel_diff`` <= 1e-6). The last line is one JSON object.

Usage: python bench/perplexity_memory.py [--model gemma3-270m] [--batch 8] [--seq 512]
(Gemma-3: about 2 minutes and 10 GB of memory; ``--model tiny-llama`` runs in seconds)
"""

from __future__ import annotations

import argparse
import json

import torch
from _harness import peak_bytes

import massmech as mm
from massmech.causal.batch import batch_masks
from massmech.causal.perplexity import perplexity
from massmech.core.models import pad_batch
from massmech.stats import token_nll


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="gemma3-270m")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=512)
    args = ap.parse_args()
    torch.manual_seed(0)
    model = mm.load_model(args.model)
    vocab = int(model.bridge.cfg.d_vocab)
    windows = torch.randint(3, min(vocab, 20000), (args.batch, args.seq)).tolist()
    out: dict = {}

    def rows() -> None:
        out["rows"] = perplexity(model, windows, batch_size=args.batch)["nll"]

    def whole() -> None:  # the batch's logits and their log-softmax at once
        ids, mask = pad_batch(windows, model.pad_id)
        with torch.inference_mode(), batch_masks(mask.long()):
            out["whole"] = float(token_nll(model.logits(ids, mask.long()), ids).double().mean())

    new, old = peak_bytes(rows), peak_bytes(whole)
    print(json.dumps({"model": args.model, "batch": args.batch, "seq": args.seq, "vocab": vocab,
                      "peak_gb_rows": round(new / 1e9, 3), "peak_gb_whole": round(old / 1e9, 3),
                      "peak_ratio": round(new / old, 4), "peak_ok": new / old <= 0.25,
                      "nll_rel_diff": abs(out["rows"] - out["whole"]) / abs(out["whole"]),
                      "nll_ok": abs(out["rows"] - out["whole"]) <= 1e-6 * abs(out["whole"])}))


if __name__ == "__main__":
    main()
