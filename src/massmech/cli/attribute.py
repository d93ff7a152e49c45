"""``massmech attribute``: which RoPE bands carry retrieval and the sink on a task's prompts."""

from __future__ import annotations

import argparse
import json
from typing import Any

from massmech.cli.flags import model_flags, out_flags
from massmech.core.catalog import DEFAULT_MODEL

EDGES_FILE, SUMMARY_FILE = "edges.parquet", "summary.csv"


def add_attribute(sub: Any, fmt: type[argparse.HelpFormatter]) -> None:
    a = sub.add_parser("attribute", formatter_class=fmt,
                       help="attention logits at the answer position split by RoPE band and massive pairs: "
                            "needle (the answer's tokens in the prompt) and sink (the first token) advantages")
    model_flags(a, DEFAULT_MODEL)
    a.add_argument("--task", required=True, help="a task name (see massmech.causal.tasks.builtin)")
    a.add_argument("--n", type=int, default=20, help="examples")
    a.add_argument("--seed", type=int, default=0, help="seed of the examples")
    a.add_argument("--layers", default=None, metavar="L,L,...", help="layers (default all)")
    a.add_argument("--lam", type=float, default=5.0, help="lambda rule of the massive pairs")
    out_flags(a, f"folder for {EDGES_FILE} (every example, layer, head, edge, group), {SUMMARY_FILE}", required=False)
    a.add_argument("--json", action="store_true", help="print the summary as JSON records")
    a.set_defaults(func=_cmd_attribute)


def _cmd_attribute(args: argparse.Namespace) -> int:
    from massmech.causal.retrieval import edge_attribution, summarize_edges
    from massmech.causal.tasks.builtin import get_task
    from massmech.core.loading import load_model
    from massmech.errors import ConfigError
    from massmech.files.io import write_json
    from massmech.files.runs import atomic_run_dir, check_out, manifest

    try:
        layers = None if args.layers is None else [int(x) for x in args.layers.split(",")]
    except ValueError:
        raise ConfigError(f"--layers takes comma-separated layer numbers, got {args.layers!r}") from None
    task = get_task(args.task)
    task.examples(args.n, args.seed)  # a task that cannot make its examples: fail before loading a model
    if args.out:
        check_out(args.out, "attribute", overwrite=args.overwrite)
    model = load_model(args.model, dtype=args.dtype, device=args.device, device_map=args.device_map,
                       offload_folder=args.offload_folder)
    df = edge_attribution(model, task, n=args.n, seed=args.seed, layers=layers, lam=args.lam, progress=not args.json)
    summary = summarize_edges(df)
    if args.out:
        config = {"model": model.info.name, "task": task.name, "n": args.n, "seed": args.seed, "layers": layers,
                  "lam": args.lam}
        with atomic_run_dir(args.out, "attribute", overwrite=args.overwrite) as tmp:
            df.to_parquet(tmp / EDGES_FILE, index=False)
            summary.to_csv(tmp / SUMMARY_FILE, index=False)
            write_json(tmp / "manifest.json", manifest(config, model_info=model.info_dict(), seed=args.seed))
    if args.json:
        print(json.dumps(json.loads(summary.to_json(orient="records"))))
        return 0
    pooled = df.groupby(["edge", "grouping", "group"], sort=False).agg(advantage=("advantage", "mean")).reset_index()
    total = df.drop_duplicates(["uid", "layer", "head", "edge"]).groupby("edge").total.mean()
    print(f"{model.info.name} / {task.name}: attention logit advantage at the answer position, mean over "
          f"{df.uid.nunique()} examples, {df.layer.nunique()} layers and every head (logit units)")
    for edge in [e for e in ("needle", "sink") if e in total.index]:
        parts = pooled[pooled.edge == edge]
        text = "; ".join(f"{r.grouping}={r.group}: {r.advantage:+.3f}" for r in parts.itertuples())
        print(f"  {edge}: total {total[edge]:+.3f}  ({text})")
    return 0
