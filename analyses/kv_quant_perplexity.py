"""KV-cache quantization vs massive values, by perplexity: python analyses/kv_quant_perplexity.py [--model M].

An example of the quantization study's ``kv`` grid (:data:`massmech.studies.quant.config.GRIDS`):
post-RoPE keys fake-quantized per token, per channel (KIVI), or per token with the massive K
dims kept in fp16; values per token. Everything (calibration split, massive rule, bits per cached
value, perplexity) is the study's own; this script only picks the grid and prints its table.
Runs (or resumes) into ``runs/quant-kv/<model>``.
"""

from __future__ import annotations

import argparse

from massmech.studies.quant.study import run_quant_study, wide
from massmech.studies.registry import get_study


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--out", help="default runs/quant-kv/<model>")
    args = ap.parse_args()
    cfg = get_study("quant").preset("kv", model=args.model, tasks=())
    w = wide(run_quant_study(cfg, args.out or f"runs/quant-kv/{args.model}"))
    print(w[["variant", "bits_per_value", "perplexity", "recall_k_post"]].round(3).to_string(index=False))


if __name__ == "__main__":
    main()
