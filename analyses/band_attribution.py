"""Which RoPE bands carry retrieval and the attention sink (issue 27, part 2): ``massmech attribute`` on the contextual tasks.

For each task, at the last prompt position of ``--n`` examples, every head's attention logit is
split by RoPE pair (exact: the pairs sum to the model's ``hook_attn_scores``), then into the
needle advantage (the prompt tokens spelling the gold answer vs the other tokens after the first)
and the sink advantage (the first token vs the rest), grouped by band (``context_bands`` at the
prompt's length) and by massive pairs (lambda rule, per head, on that prompt's post-RoPE Q/K).
Prints per task and edge the mean advantage (logit units; mean over examples, layers and heads)
carried by each group, and its share of the edge's total.

Runs (or resumes) the ``attribute`` study into ``--out`` (cells, ``bands.parquet``, the heat maps).

Usage: python analyses/band_attribution.py [--model smollm2-135m] [--n 20] [--out runs/attribute/<model>-n<n>]
Last line: JSON, one record per (task, edge, grouping, group).
"""

import argparse
import json

import pandas as pd

from massmech.studies.attribute import AttributeConfig, run_attribute

ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("--model", default="smollm2-135m")
ap.add_argument("--n", type=int, default=20)
ap.add_argument("--tasks", nargs="+", default=["passkey", "kv_lookup"])
ap.add_argument("--out", default=None)
args = ap.parse_args()

cfg = AttributeConfig(model=args.model, tasks=tuple(args.tasks), n=args.n)
table = run_attribute(cfg, args.out or f"runs/attribute/{args.model}-n{args.n}", progress=True)
records = []
for task, df in table.groupby("task", sort=False):
    total = df.drop_duplicates(["uid", "layer", "head", "edge"]).groupby("edge").total.mean()
    n_pairs = df[df.grouping == "massive"].groupby(["uid", "layer", "head", "edge"]).pairs.sum().mean()
    pooled = df.groupby(["edge", "grouping", "group"], sort=False).agg(advantage=("advantage", "mean"),
                                                                      pairs=("pairs", "mean"))
    for (edge, grouping, group), r in pooled.iterrows():
        records.append({"task": task, "edge": edge, "grouping": grouping, "group": group,
                        "advantage": float(r.advantage), "share": float(r.advantage / total[edge]),
                        "pair_share": float(r.pairs / n_pairs), "total": float(total[edge]),
                        "n_examples": int(df[df.edge == edge].uid.nunique())})

res = pd.DataFrame(records)
print(f"{args.model}: attention logit advantage at the answer position by RoPE group (mean over examples, "
      "layers and heads; its share of the edge's total; in brackets the group's share of the pairs, its base rate)")
print("| task | edge | n | total | low | mid | high | massive pairs | other pairs |")
print("|---|---|---|---|---|---|---|---|---|")
for (task, edge), g in res.groupby(["task", "edge"], sort=False):
    cell = {r.group: f"{r.advantage:+.3f} ({r.share:.0%}) [{r.pair_share:.0%}]" for r in g.itertuples()}
    print(f"| {task} | {edge} | {g.n_examples.iloc[0]} | {g.total.iloc[0]:+.3f} | {cell.get('low', '-')} | "
          f"{cell.get('mid', '-')} | {cell.get('high', '-')} | {cell.get('massive', '-')} | {cell.get('other', '-')} |")
print(json.dumps(records))
