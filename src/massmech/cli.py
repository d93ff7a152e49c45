"""Command line: ``massmech doctor | analyze | compare | ablate | twins | quantize | cells | models``.

A thin layer over the library runners. Every flag has help text and shows its default.
"""

from __future__ import annotations

import argparse
import ast
import importlib.metadata
import json
import sys
import warnings

from massmech.core.catalog import DEFAULT_MODEL, DTYPE_NAMES, model_catalog
from massmech.errors import ConfigError, MassmechError


def _cmd_doctor(args: argparse.Namespace) -> int:
    from massmech.diagnostics.doctor import doctor

    verdict = doctor(args.model, dtype=args.dtype, device=args.device)
    if args.json:
        print(json.dumps(verdict, indent=2))
    else:
        print(f"model: {verdict['model']['name']} ({verdict['model']['source']}), "
              f"{verdict['model']['dtype']} on {verdict['model']['device']}")
        if verdict["max_abs_logit_diff"] is not None:
            print(f"max |bridge - HF| logit diff: {verdict['max_abs_logit_diff']:.3e} (tolerance {verdict['logit_tol']:.0e})")
        if verdict["rope_bases"]:
            bases = sorted({round(b, 1) for b in verdict["rope_bases"]})
            print(f"RoPE bases (per-layer, distinct): {bases}  layout: {verdict['rope']['layout']}")
        for name, ok in verdict["checks"].items():
            print(f"  [{'ok' if ok else 'FAIL'}] {name}" + (f": {verdict['errors'][name]}" if not ok else ""))
        for name, why in verdict["skipped"].items():
            print(f"  [skipped] {name}: {why}")
        print("OK" if verdict["ok"] else "FAILED")
    return 0 if verdict["ok"] else 1


def _cmd_analyze(args: argparse.Namespace) -> int:
    from massmech.studies.analyze import AnalyzeConfig, run_analyze

    cfg = AnalyzeConfig(
        model=args.model,
        n_tokens=args.tokens,
        seq_len=args.seq_len,
        batch_size=args.batch_size,
        lam=args.lam,
        heatmap_layers=tuple(args.plot_layers or ()),
        exclude_first_token=args.exclude_first_token,
        seed=args.seed,
        text=args.text,
        dataset=args.dataset,
        dataset_split=args.dataset_split,
        text_field=args.text_field,
        dtype=args.dtype,
        device=args.device,
    )
    summary = run_analyze(cfg, args.out, overwrite=args.overwrite, progress=not args.json)
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"{summary['model']}: {summary['n_tokens']} tokens of {summary['corpus']}, context "
          f"{summary['context_len']} -> {summary['out_dir']}")
    print(f"  {'':7s} {'massive':>7s} {'low-band energy':>15s} {'low-half energy':>15s} {'massive in low band':>19s} {'emergence':>9s}")
    for key, s in summary["by_stage"].items():
        share = s["massive_low_band_share"]
        print(
            f"  {key:7s} {s['massive_count']:7d} {s['low_band_energy_fraction']:15.1%} "
            f"{s['low_half_energy_fraction']:15.1%} {'n/a' if share is None else f'{share:.1%}':>19s} "
            f"{'none' if s['emergence_layer'] is None else s['emergence_layer']:>9}"
        )
    print("  (V is not rotated: its dims are grouped as Q/K pairs, the control)")
    return 0


def _task_params(items: list[str] | None) -> dict:
    """``["filler_repeats=2", "depths=(0.5,)"]`` -> ``{"filler_repeats": 2, "depths": (0.5,)}``."""
    params = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--task-param takes NAME=VALUE, got {item!r}")
        try:
            params[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            params[key] = value  # a plain string
    return params


def _cmd_ablate(args: argparse.Namespace) -> int:
    from massmech.causal.disruption import Disruption
    from massmech.causal.tasks.builtin import get_task
    from massmech.infra.runs import check_out
    from massmech.studies.ablation import ablate, layer_range

    params = _task_params(args.task_param)
    get_task(args.task, **params).examples(args.n, args.seed)  # bad task or n: fail before loading a model
    if args.out:
        check_out(args.out, "ablate", overwrite=args.overwrite)
    from massmech.core.loading import load_model

    model = load_model(args.model, dtype=args.dtype, device=args.device)
    layers = layer_range(args.disrupt_layers, model.info.n_layers)
    d = Disruption(
        target=args.target, stage=args.stage, rule=args.rule, lam=args.lam, k=args.k,
        layers=layers, kv_cache=args.kv_cache, seed=args.seed,
    )
    res = ablate(model, args.task, n=args.n, disruption=d, control=args.control, seed=args.seed,
                 batch_size=args.batch_size, task_params=params, out=args.out, overwrite=args.overwrite,
                 progress=not args.json)
    if args.json:
        print(json.dumps(res, indent=2))
        return 0
    print(f"{res['model']} / {res['task']} ({res['kind']}), disruption {res['condition']}, control {res['control_kind']}")
    for name in ("baseline", "massive", "control"):
        r = res[name]
        delta = "" if name == "baseline" else f"  delta {r['delta']:+.3f} [{r['delta_ci_low']:+.3f}, {r['delta_ci_high']:+.3f}]"
        print(f"  {name:9s} {r['accuracy']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]  n={r['n']}  dims/example={r['n_dims']:.0f}{delta}")
    return 0


def _cmd_twins(args: argparse.Namespace) -> int:
    import os

    from massmech.studies.twins.config import preset
    from massmech.studies.twins.study import run_twins

    cfg = preset(args.preset)
    if args.steps is not None:
        cfg = cfg.replace(steps=args.steps, checkpoints=tuple(s for s in cfg.checkpoints if s <= args.steps))
    if args.seed is not None:
        cfg = cfg.replace(seed=args.seed)
    workers = args.workers or min(len(cfg.variants), os.cpu_count() or 1)
    summary = run_twins(cfg, args.out, workers=workers, device=args.device, progress=not args.json)
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"twins ({cfg.preset}, {cfg.steps} steps) -> {args.out}/analysis")
    print("  largest per-head max/mean of M, later half of the layers, final checkpoint:")
    for mech, r in summary["twins"].items():
        print(f"    {mech:9s} Q {r['q']:.2f}  K {r['k']:.2f}  V {r['v']:.2f}")
    print("  final scores:")
    for name, sc in summary["final_scores"].items():
        print(f"    {name:16s} " + "  ".join(f"{k} {v:.3f}" for k, v in sc.items()))
    print("  disruption of the RoPE twin:")
    for cond, sc in summary["disruption"].items():
        print(f"    {cond:9s} " + "  ".join(f"{k} {v:.3f}" for k, v in sc.items()))
    return 0


def _group_size(text: str) -> int | None | str:
    if text in ("auto", "none"):
        return None if text == "none" else text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"group size must be an integer, 'none' or 'auto', got {text!r}") from None


def _cmd_quantize(args: argparse.Namespace) -> int:
    import tempfile

    from massmech.studies.quant.config import DEFAULT_TASKS, QuantSpec, QuantStudyConfig
    from massmech.studies.quant.study import run_quant_study, summary_json

    spec = QuantSpec.of(args.method, args.bits, args.group_size, args.alpha)
    tasks = tuple(t for t in (args.tasks.split(",") if args.tasks else DEFAULT_TASKS) if t)
    cfg = QuantStudyConfig(model=args.model, variants=(spec,), tasks=tasks, n=args.n, seed=args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        table = run_quant_study(cfg, args.out or tmp, progress=not args.json)
    result = summary_json(table, spec.label) | {"reference": summary_json(table, "none")}
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    ref = result["reference"]
    print(f"{result['model']} {spec.label} (base: {result['base']}; same as base: {result['same_as_base']})")
    print(f"  massive recall (Q/K pre/post mean): {result['massive_recall']}")
    for site, p in result["preservation"].items():
        print(f"    {site:7s} recall {p['recall']}  rel. error massive {p['rel_error_massive']}  other {p['rel_error_other']}")
    print(f"  perplexity {result['perplexity']:.2f} (reference {ref['perplexity']:.2f}); bits {result['bits_per_value']}")
    for name, t in result["tasks"].items():
        print(f"  {name:20s} {t['accuracy']:.3f} [{t['ci_low']:.3f}, {t['ci_high']:.3f}] n={t['n']}"
              f"  (reference {ref['tasks'][name]['accuracy']:.3f})")
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from massmech.studies.compare import compare

    labels = args.labels.split(",") if args.labels else None
    result = compare(*args.runs, labels=labels, out=args.out, overwrite=args.overwrite)
    table = result.table
    if args.json:
        print(table.to_json(orient="records", indent=2))
        return 0
    print(table.to_string(index=False))
    if args.out:
        print(f"-> {args.out}")
    return 0


def _cmd_cells(args: argparse.Namespace) -> int:
    from massmech.infra.cells import gc, list_cells

    if args.action == "ls":
        table = list_cells(args.store)
        if args.json:
            print(table.to_json(orient="records"))
        elif table.empty:
            print(f"{args.store}: no cells")
        else:
            counts = table.groupby(["study", "version", "current"]).size().rename("cells").reset_index()
            print(counts.to_string(index=False))
        return 0
    gone = gc(args.store, dry_run=args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    print(f"{verb} {len(gone)} stale cell folders" + "".join(f"\n  {p}" for p in gone))
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    rows = model_catalog()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for r in rows:
        state = "installed" if r["installed"] else f"not installed: {r['install']}"
        kind = "random init, for tests" if r["random_init"] else "pretrained"
        print(f"{r['name']:14s} {r['parameters']:>5s}  {kind:22s} {state}")
    print("Also: a .gguf path, a local Hugging Face model folder, or a hub id 'org/name' (needs a network).")
    return 0


class _HELP(argparse.HelpFormatter):
    """Help that shows every real default (not the None/False of optional flags)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "%(default)" not in text and action.option_strings and not any(
            action.default is x for x in (None, False, argparse.SUPPRESS)
        ):
            text += " (default: %(default)s)"
        return text


def _model_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=DEFAULT_MODEL, metavar="SPEC",
                   help="embedded name (see `massmech models`), .gguf path, local folder or hub id")
    p.add_argument("--dtype", default="float32", choices=sorted(DTYPE_NAMES), help="weight dtype")
    p.add_argument("--device", default=None, help="torch device, e.g. cpu, cuda, cuda:1 (default: cpu)")


def _out_flags(p: argparse.ArgumentParser, what: str, required: bool) -> None:
    p.add_argument("--out", required=required, metavar="DIR",
                   help=f"{what}; must be new, empty, or a previous run of this command (never another folder)")
    p.add_argument("--overwrite", action="store_true", help="replace a previous run of this command in --out")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="massmech", description=__doc__, formatter_class=_HELP)
    p.add_argument("--version", action="version", version=f"massmech {importlib.metadata.version('massmech')}")
    p.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("doctor", help="check bridge == HF, RoPE spec == model, hooks fire", formatter_class=_HELP)
    _model_flags(d)
    d.add_argument("--json", action="store_true", help="print the verdict as JSON")
    d.set_defaults(func=_cmd_doctor)

    c = sub.add_parser("analyze", help="the main job: Q/K/V statistics on natural text, frequency analysis, figures",
                       formatter_class=_HELP)
    _model_flags(c)
    _out_flags(c, "run folder to write (atomically)", required=True)
    c.add_argument("--text", metavar="FILE", help="your own corpus: .txt/.md file, .jsonl (--text-field) or a folder "
                   "of .txt files (default: BBC news)")
    c.add_argument("--dataset", metavar="NAME", help="your own corpus from `datasets`: a save_to_disk folder or a hub id")
    c.add_argument("--dataset-split", default="train", help="split of --dataset")
    c.add_argument("--text-field", default="text", help="text column of --dataset / field of --text .jsonl")
    c.add_argument("--tokens", type=int, default=4096, help="tokens to capture over")
    c.add_argument("--seq-len", type=int, default=512, help="window length = the context the bands refer to")
    c.add_argument("--batch-size", type=int, default=4, help="windows per forward pass")
    c.add_argument("--lam", type=float, default=5.0, help="massive rule: M > lam x the head's mean M")
    c.add_argument("--plot-layers", type=int, nargs="*", metavar="L",
                   help="layers shown in the heatmap/spectrum figures (default: first, middle, last)")
    c.add_argument("--layers", type=int, nargs="*", dest="plot_layers", help=argparse.SUPPRESS)  # old name
    c.add_argument("--exclude-first-token", action="store_true", help="leave each window's first token out")
    c.add_argument("--seed", type=int, default=0, help="order of the corpus texts")
    c.add_argument("--json", action="store_true", help="print the summary as JSON (per site.stage)")
    c.set_defaults(func=_cmd_analyze)

    r = sub.add_parser("compare", help="compare analyze runs: one table, overlaid spectrum and emergence figures",
                       formatter_class=_HELP)
    r.add_argument("runs", nargs="+", metavar="RUN", help="analyze run folders")
    r.add_argument("--labels", help="comma-separated labels, one per run (default: folder names)")
    _out_flags(r, "folder for compare.csv/.parquet and figures/", required=False)
    r.add_argument("--json", action="store_true", help="print the table as JSON records")
    r.set_defaults(func=_cmd_compare)

    a = sub.add_parser("ablate", help="baseline vs massive-disrupted vs control accuracy on one task",
                       formatter_class=_HELP)
    _model_flags(a)
    a.add_argument("--task", required=True, help="task name (see massmech.causal.tasks.builtin.TASKS)")
    a.add_argument("--task-param", action="append", metavar="NAME=VALUE",
                   help="task parameter, repeatable, e.g. --task-param filler_repeats=2")
    a.add_argument("--n", type=int, default=100, help="examples")
    a.add_argument("--target", default="qk", choices=["q", "k", "qk"], help="what is disrupted")
    a.add_argument("--stage", default="pre", choices=["pre", "post"], help="before or after RoPE")
    a.add_argument("--rule", default="lambda", choices=["lambda", "topk"], help="how massive dims are selected")
    a.add_argument("--lam", type=float, default=5.0, help="lambda of --rule lambda (M > lam x head mean)")
    a.add_argument("--k", type=int, default=4, help="dims per head of --rule topk")
    a.add_argument("--disrupt-layers", default="all", metavar="RANGE",
                   help="layers to disrupt: all, early, middle, late or 'a-b'")
    a.add_argument("--layers", dest="disrupt_layers", help=argparse.SUPPRESS)  # old name
    a.add_argument("--control", default="lowest", choices=["lowest", "random", "band-low", "band-mid", "band-high"],
                   help="control dims replaced instead, same count")
    a.add_argument("--kv-cache", default="prefill", choices=["prefill", "every_step"],
                   help="disrupt the prompt only, or every decode step too")
    a.add_argument("--batch-size", type=int, default=16, help="sequences per forward pass (results do not depend on it)")
    a.add_argument("--seed", type=int, default=0, help="seed of the examples and of random controls")
    _out_flags(a, "also write ablate.json, examples.parquet/.csv (per example) and manifest.json", required=False)
    a.add_argument("--json", action="store_true", help="print the result as JSON")
    a.set_defaults(func=_cmd_ablate)

    t = sub.add_parser("twins", help="train RoPE / absolute / NoPE twins and trace where massive values come from",
                       formatter_class=_HELP)
    t.add_argument("--preset", default="demo", help="tiny, demo (about 15 min on 2 cores) or paper (one GPU)")
    t.add_argument("--out", required=True, help="twins folder (new, or a previous twins run: resumed; analysis/ replaced)")
    t.add_argument("--workers", type=int, help="variants trained in parallel (default: one per CPU core)")
    t.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    t.add_argument("--steps", type=int, help="override the preset's training steps")
    t.add_argument("--seed", type=int, help="override the preset's seed")
    t.add_argument("--json", action="store_true", help="print the summary as JSON")
    t.set_defaults(func=_cmd_twins)

    q = sub.add_parser("quantize", help="one quantized variant: massive-value preservation, task accuracy, perplexity",
                       formatter_class=_HELP)
    q.add_argument("--model", default=DEFAULT_MODEL, metavar="SPEC", help="model spec (see `massmech models`)")
    q.add_argument("--method", required=True, help="rtn, gptq, awq, smoothquant, w8a8-naive, gguf-q8_0|q5_0|q4_1|q4_0, "
                   "kv-per-token, kv-per-channel, kv-massive-aware")
    q.add_argument("--bits", type=int, help="bits (default: 4 weight-only, 8 for W8A8, 4 for KV)")
    q.add_argument("--group-size", type=_group_size, default="auto", help="input weights per scale for rtn/gptq/awq; "
                   "'none' = per row; auto = 64 at 4 bits, per row at 8")
    q.add_argument("--alpha", type=float, default=0.5, help="SmoothQuant migration strength")
    q.add_argument("--tasks", help="comma-separated task names (default: country_capital, city_country, "
                   "passkey, kv_lookup, knowledge_conflict)")
    q.add_argument("--n", type=int, default=40, help="examples per task")
    q.add_argument("--seed", type=int, default=0, help="seed of the examples and calibration")
    q.add_argument("--out", help="also keep the study folder here (new, or a previous quant study: resumed)")
    q.add_argument("--json", action="store_true", help="print JSON: massive_recall, perplexity, tasks, preservation, ...")
    q.set_defaults(func=_cmd_quantize)

    s = sub.add_parser("cells", help="list a cell store, or remove its stale cells (older schema versions)",
                       formatter_class=_HELP)
    s.add_argument("action", choices=["ls", "gc"], help="ls: cells per study and version; gc: remove stale cells")
    s.add_argument("store", metavar="DIR", help="a cell store, e.g. RUN/cells or a shared --cells folder")
    s.add_argument("--dry-run", action="store_true", help="gc: only say what would be removed")
    s.add_argument("--json", action="store_true", help="ls: one JSON record per cell")
    s.set_defaults(func=_cmd_cells)

    m = sub.add_parser("models", help="the models known by name: installed, extra, random init, size",
                       formatter_class=_HELP)
    m.add_argument("--json", action="store_true", help="print JSON records")
    m.set_defaults(func=_cmd_models)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with warnings.catch_warnings():
            if not args.debug:  # library deprecation chatter is not the user's business
                warnings.filterwarnings("ignore", category=FutureWarning)
                warnings.filterwarnings("ignore", category=DeprecationWarning)
            return int(args.func(args) or 0)
    except MassmechError as err:  # anything else is a bug: its traceback is shown
        if args.debug:
            raise
        print(f"massmech {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
