"""Does in-context copying form in the demo-size RoPE twin? Random tokens from a 64-token alphabet
vs the whole vocabulary: python analyses/twins_alphabet.py [--out runs/twins/alphabet].

Trains only the RoPE twin of the demo preset under both settings (about 6 minutes on 2 cores,
one run per core; resumes from checkpoints) and prints in-context accuracy and natural-text loss
at every checkpoint.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pandas as pd
from transformers import PreTrainedTokenizerFast

from massmech.core.twin import load_twin
from massmech.studies.registry import get_study
from massmech.studies.twins.config import TwinsConfig, Variant
from massmech.studies.twins.data import load_corpus
from massmech.studies.twins.measures import eval_sets, row_values, score
from massmech.studies.twins.study import train_all
from massmech.studies.twins.train import checkpoint_dirs


def train_rope(cfg_json: str, out: str) -> None:
    train_all(TwinsConfig.from_dict(json.loads(cfg_json)), out, variants=["rope"], progress=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="runs/twins/alphabet")
    ap.add_argument("--preset", default="demo", help="the twins preset whose RoPE twin is trained (tiny: for tests)")
    args = ap.parse_args()
    base = get_study("twins").preset(args.preset, preset="alphabet")
    runs = {"alphabet 64": (base, Path(args.out) / "alphabet64"),
            "whole vocabulary": (base.replace(alphabet=None), Path(args.out) / "vocabulary")}
    with ProcessPoolExecutor(max_workers=2, mp_context=mp.get_context("spawn")) as pool:
        for job in [pool.submit(train_rope, cfg.to_json(), str(out)) for cfg, out in runs.values()]:
            job.result()
    rows = []
    for label, (cfg, out) in runs.items():
        tok = PreTrainedTokenizerFast.from_pretrained(str(out / "tokenizer"))
        corpus = load_corpus(tok, seed=cfg.seed, heldout_fraction=cfg.heldout_fraction, alphabet=cfg.alphabet)
        sets = eval_sets(cfg, corpus, cfg.context)
        for step, d in sorted(checkpoint_dirs(out, Variant("rope")).items()):
            model = load_twin(d).eval()
            s = score(row_values(lambda x, prompt, rows, m=model: m(x).logits, sets), seed=cfg.seed)
            rows += [{"random tokens": label, "step": step, "metric": m, "value": v}
                     for m, v in zip(s.metric, s.value, strict=True)]
    table = pd.DataFrame(rows).pivot_table(index=["random tokens", "step"], columns="metric", values="value")
    print(table.round(3).to_string())


if __name__ == "__main__":
    main()
