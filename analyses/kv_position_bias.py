"""Where in the list the model's key-value answer comes from, with and without the massive values.

kv_lookup lists 8 ``word: number`` lines and asks for one key's number; the gold line's position
(``slot``, balanced over 0-7) is the example's group. Scored by rank (the gold number against the
prompt's 7 other numbers, one prompt pass per example and condition), this prints per condition
(baseline; λ = 5 massive Q/K dims before RoPE replaced by their prompt mean; the random other dims
removing the same token variance) the accuracy per gold slot and how often the chosen number sits
at each position of the list. A model that always answers the first line's number scores 1 on
slot 0 and 0 elsewhere: a rise in accuracy under a disruption can be a lost position bias, not
better retrieval.

Usage: python analyses/kv_position_bias.py [--model gemma3-270m] [--n 120] [--seed 0] [--lam 5]
Last line: JSON, per condition: accuracy, accuracy_by_slot, chosen_position_counts, n.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

import massmech as mm
from massmech.causal.disruption import Disruption
from massmech.causal.evaluate import score
from massmech.causal.tasks.builtin import get_task

ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("--model", default="gemma3-270m")
ap.add_argument("--n", type=int, default=120, help="examples (a multiple of 8 balances the slots)")
ap.add_argument("--seed", type=int, default=0)
ap.add_argument("--lam", type=float, default=5.0, help="the massive-value rule's lambda (per-head mean)")
args = ap.parse_args()

task = get_task("kv_lookup")
massive = Disruption(rule="lambda", lam=args.lam)
conditions = {"baseline": None, "massive": massive, "matched control": massive.as_control("matched")}
df = score(mm.load_model(args.model), task, conditions, scorer="rank", n=args.n, seed=args.seed, progress=True)
examples = {ex.uid: ex for ex in task.examples(args.n, args.seed)}


def listed(uid: int) -> list[str]:
    return [line.split(": ", 1)[1] for line in examples[uid].prompt.splitlines()[1:-1]]


df["slot"] = df.uid.map(lambda u: int(examples[u].group.split("=")[1]))
# values are drawn with replacement: where the chosen value sits on two lines its position is unknown (-1)
df["chosen"] = [listed(u).index(p) if listed(u).count(p) == 1 else -1 for u, p in zip(df.uid, df.pred, strict=True)]
n_pairs = len(listed(df.uid.iloc[0]))
out = {}
for name, g in df.groupby("condition", sort=False):
    by_slot = g.groupby("slot").correct.mean()
    counts = np.bincount(g.chosen[g.chosen >= 0], minlength=n_pairs).tolist()
    out[name] = {"accuracy": round(float(g.correct.mean()), 3), "n": len(g),
                 "accuracy_by_slot": [round(float(by_slot.get(s, np.nan)), 2) for s in range(n_pairs)],
                 "chosen_position_counts": counts, "chosen_position_unknown": int((g.chosen < 0).sum())}
    print(f"{name:16s} accuracy {g.correct.mean():.2f} (n = {len(g)}); by gold slot {out[name]['accuracy_by_slot']}; "
          f"chosen position {counts} ({out[name]['chosen_position_unknown']} on two lines)")
print(json.dumps({"model": args.model, "task": "kv_lookup", "scorer": "rank", "lam": args.lam, "conditions": out}))
