"""The ``massmech`` commands that are not studies: their flags (``add_*``), what they call and what they print."""

from __future__ import annotations

import argparse
import ast
import json
from typing import Any

from massmech.cli.flags import model_flags, out_flags
from massmech.core.catalog import DEFAULT_MODEL, model_catalog
from massmech.errors import ConfigError

Formatter = type[argparse.HelpFormatter]


def add_doctor(sub: Any, fmt: Formatter) -> None:
    d = sub.add_parser("doctor", help="check bridge == HF, RoPE spec == model, hooks fire", formatter_class=fmt)
    model_flags(d, DEFAULT_MODEL)
    d.add_argument("--json", action="store_true", help="print the verdict as JSON")
    d.set_defaults(func=_cmd_doctor)


def add_compare(sub: Any, fmt: Formatter) -> None:
    r = sub.add_parser("compare", help="compare analyze runs: one table, overlaid spectrum and emergence figures",
                       formatter_class=fmt)
    r.add_argument("runs", nargs="+", metavar="RUN", help="analyze run folders")
    r.add_argument("--labels", help="comma-separated labels, one per run (default: folder names)")
    out_flags(r, "folder for compare.csv/.parquet and figures/", required=False)
    r.add_argument("--json", action="store_true", help="print the table as JSON records")
    r.set_defaults(func=_cmd_compare)


def add_ablate(sub: Any, fmt: Formatter) -> None:
    from massmech.causal.vocabulary import (
        CONTROL_HELP,
        CONTROLS,
        GRANULARITIES,
        GRANULARITY_HELP,
        KV_CACHE,
        REPLACE_HELP,
        REPLACEMENTS,
        RULES,
        SCORER_HELP,
        SCORERS,
        TARGETS,
    )

    a = sub.add_parser("ablate", help="baseline vs massive-disrupted vs control accuracy on one task", formatter_class=fmt)
    model_flags(a, DEFAULT_MODEL)
    a.add_argument("--task", help="task name (an unknown name lists the tasks)")
    a.add_argument("--task-file", help="your own task: a .jsonl/.json/.csv/.parquet file (instead of --task)")
    a.add_argument("--field", action="append", metavar="NAME=COLUMN",
                   help="--task-file columns, repeatable: question=, answer= (required), context=, choices=, id=")
    a.add_argument("--format", default="exact", choices=["exact", "choice", "yesno", "number"],
                   help="--task-file answers: exact continuation, lettered multiple choice, yes/no, final number")
    a.add_argument("--kind", default="contextual", choices=["contextual", "parametric"], help="--task-file kind")
    a.add_argument("--n-shots", type=int, default=0, help="--task-file demonstrations drawn from the file")
    a.add_argument("--template", metavar="TEXT",
                   help="--task-file prompt template with {question} (and {context}, {choices}); default: the "
                        "question as written (exact, number), with an Answer: cue (choice, yesno)")
    a.add_argument("--chat", action="store_true", help="--task-file: ask each prompt as a user turn of the model's chat template")
    a.add_argument("--task-param", action="append", metavar="NAME=VALUE",
                   help="task parameter, repeatable, e.g. --task-param filler_repeats=2")
    a.add_argument("--n", type=int, default=100, help="examples (a task with fewer uses all it has, and says so)")
    a.add_argument("--target", default="qk", choices=list(TARGETS), help="what is disrupted")
    a.add_argument("--stage", default="pre", choices=["pre", "post"], help="before or after RoPE")
    a.add_argument("--rule", default="lambda", choices=[r for r in RULES if r != "dims"], help="how massive dims are selected")
    a.add_argument("--lam", type=float, default=5.0, help="lambda of --rule lambda (M > lam x head mean)")
    a.add_argument("--k", type=int, default=4, help="dims per head of --rule topk")
    a.add_argument("--disrupt-layers", default="all", metavar="RANGE",
                   help="layers to disrupt: all, early, middle, late or 'a-b'")
    a.add_argument("--layers", dest="disrupt_layers", help=argparse.SUPPRESS)  # old name
    a.add_argument("--control", default="matched", choices=[c for c in CONTROLS if c],
                   help="control dims replaced instead: " + "; ".join(f"{k}: {v}" for k, v in CONTROL_HELP.items()))
    a.add_argument("--kl-match", action="store_true",
                   help="match the control (matched or random) in effect: scale it until its next-token KL on "
                        "neutral text (BBC news, not the task) is within 10%% of the disruption's")
    a.add_argument("--replace", default="mean", choices=[r for r in REPLACEMENTS if r != "calib_mean"],
                   help="replacement: " + "; ".join(f"{k}: {v}" for k, v in REPLACE_HELP.items() if k != "calib_mean"))
    a.add_argument("--kv-cache", default="prefill", choices=list(KV_CACHE),
                   help="prefill: disrupt the prompt only; every_step: every decoded token too")
    a.add_argument("--granularity", default="dim", choices=list(GRANULARITIES),
                   help="what is replaced: " + "; ".join(f"{k}: {v}" for k, v in GRANULARITY_HELP.items()))
    a.add_argument("--scorer", default="strict", choices=list(SCORERS),
                   help="how an exact answer is scored: " + "; ".join(f"{k}: {v}" for k, v in SCORER_HELP.items()))
    a.add_argument("--max-new-tokens", type=int, default=16, help="greedy tokens per example for --scorer contains/first-line")
    a.add_argument("--batch-size", type=int, default=16, help="sequences per forward pass (results do not depend on it)")
    a.add_argument("--seed", type=int, default=0, help="seed of the examples and of random controls")
    out_flags(a, "also write ablate.json, examples.parquet/.csv (per example) and manifest.json", required=False)
    a.add_argument("--json", action="store_true", help="print the result as JSON")
    a.set_defaults(func=_cmd_ablate)


def add_quantize(sub: Any, fmt: Formatter) -> None:
    q = sub.add_parser("quantize", help="one quantized variant: massive-value preservation, task accuracy, perplexity",
                       formatter_class=fmt)
    q.add_argument("--model", default=DEFAULT_MODEL, metavar="SPEC", help="model spec (see `massmech models`)")
    q.add_argument("--method", required=True, help="rtn, gptq, awq, smoothquant, w8a8-naive, gguf-q8_0|q5_0|q4_1|q4_0, "
                   "kv-per-token, kv-per-channel, kv-massive-aware, qk-rtn, qk-rtn-keep-massive, qk-rtn-keep-random")
    q.add_argument("--bits", type=int, help="bits (default: 4 weight-only, 8 for W8A8, 4 for KV)")
    q.add_argument("--group-size", type=_group_size, default="auto", help="input weights per scale for rtn/gptq/awq; "
                   "'none' = per row; auto = 64 at 4 bits, per row at 8")
    q.add_argument("--alpha", type=float, default=0.5, help="SmoothQuant migration strength")
    q.add_argument("--sites", default="qk", choices=("qk", "q", "k"), help="qk-* only: quantize W_q and W_k, or one")
    q.add_argument("--layers", default="all", choices=("all", "local", "global"),
                   help="qk-* only: every layer, or the sliding-window (local) or full-attention (global) ones")
    q.add_argument("--draw", type=int, default=0, help="qk-* only: 0 rounds to nearest; d >= 1 rounds stochastically "
                   "(seed d) and redraws qk-rtn-keep-random's rows")
    q.add_argument("--tasks", help="comma-separated task names (default: country_capital, city_country, "
                   "passkey, kv_lookup, knowledge_conflict)")
    q.add_argument("--n", type=int, default=40, help="examples per task")
    q.add_argument("--seed", type=int, default=0, help="seed of the examples and calibration")
    q.add_argument("--out", help="also keep the study folder here (new, or a previous quant study: resumed)")
    q.add_argument("--json", action="store_true", help="print JSON: massive_recall, perplexity, tasks, preservation, ...")
    q.set_defaults(func=_cmd_quantize)


def add_cells(sub: Any, fmt: Formatter) -> None:
    s = sub.add_parser("cells", help="list a cell store, or remove its stale cells (older schema versions)",
                       formatter_class=fmt)
    s.add_argument("action", choices=["ls", "gc"], help="ls: cells per study and version; gc: remove stale cells")
    s.add_argument("store", metavar="DIR", help="a cell store, e.g. RUN/cells or a shared --cells folder")
    s.add_argument("--dry-run", action="store_true", help="gc: only say what would be removed")
    s.add_argument("--json", action="store_true", help="ls: one JSON record per cell")
    s.set_defaults(func=_cmd_cells)


def add_report(sub: Any, fmt: Formatter) -> None:
    g = sub.add_parser("report", help="results pages generated from run folders: one run, the claim ledger, the docs",
                       formatter_class=fmt)
    g.add_argument("runs", nargs="*", metavar="RUN_DIR", help="run folders to render (one page each)")
    g.add_argument("--markdown", action="store_true", help="print markdown (the default output format)")
    g.add_argument("--ledger", metavar="RUNS_ROOT", help="render the claim ledger from the run folders under RUNS_ROOT")
    g.add_argument("--docs", metavar="RUNS_ROOT", help="regenerate the docs' ledger, results pages and gallery "
                   "(docs/ledger.md, docs/results/, docs/gallery.md) from RUNS_ROOT")
    g.add_argument("--out", metavar="PATH", help="write the page here (atomically; only over a generated page); "
                   "with --docs: the docs folder (default docs)")
    g.add_argument("--models", metavar="M1,M2", help="models of the ledger (default: the embedded models)")
    g.add_argument("--figures", default="figures", metavar="DIR", help="with --docs: the folder of the figures")
    g.set_defaults(func=_cmd_report)


def add_models(sub: Any, fmt: Formatter) -> None:
    m = sub.add_parser("models", help="the models known by name: installed, extra, random init, size", formatter_class=fmt)
    m.add_argument("--json", action="store_true", help="print JSON records")
    m.set_defaults(func=_cmd_models)


ADD = (add_doctor, add_compare, add_ablate, add_quantize, add_cells, add_report, add_models)


def _cmd_doctor(args: argparse.Namespace) -> int:
    from massmech.diagnostics.doctor import doctor

    if args.device_map:  # a sharded model: loaded here, its reference sharded the same way
        from massmech.core.loading import load_model

        subject = load_model(args.model, dtype=args.dtype, device=args.device, device_map=args.device_map,
                             offload_folder=args.offload_folder)
        verdict = doctor(subject)
    else:
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
    from massmech.files.runs import check_out
    from massmech.studies.ablation import ablate, layer_range

    params = _task_params(args.task_param)
    if bool(args.task) == bool(args.task_file):
        raise ConfigError("pass one of --task NAME or --task-file PATH")
    if args.task_file:
        from massmech.causal.tasks.custom import task_from_spec

        task = task_from_spec(args.task_file, args.field or [], format=args.format, kind=args.kind, n_shots=args.n_shots,
                              template=args.template, chat=args.chat)
    elif args.template or args.chat:
        raise ConfigError("--template and --chat shape a --task-file's prompts; a named task has its own")
    else:
        task = get_task(args.task, **params)
    task.examples(min(args.n, task.max_n()), args.seed)  # a task that cannot make its examples: fail before loading a model
    if args.out:
        check_out(args.out, "ablate", overwrite=args.overwrite)
    from massmech.core.loading import load_model

    model = load_model(args.model, dtype=args.dtype, device=args.device, device_map=args.device_map,
                       offload_folder=args.offload_folder)
    layers = layer_range(args.disrupt_layers, model.info.n_layers)
    d = Disruption(
        target=args.target, stage=args.stage, rule=args.rule, lam=args.lam, k=args.k,
        layers=layers, kv_cache=args.kv_cache, seed=args.seed, replace=args.replace, granularity=args.granularity,
    )
    res = ablate(model, task, n=args.n, disruption=d, control=args.control, seed=args.seed, scorer=args.scorer,
                 max_new_tokens=args.max_new_tokens,
                 batch_size=args.batch_size, task_params=params, out=args.out, overwrite=args.overwrite,
                 progress=not args.json, kl_match=args.kl_match)
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        _print_ablation(res)
    return 0


def _print_ablation(res: dict) -> None:
    """The result of one ``ablate`` run, for a reader."""
    print(f"{res['model']} / {res['task']} ({res['kind']}), disruption {res['condition']}, control {res['control_kind']}")
    print(f"  protocol: {res['protocol']}; scorer: {res['scorer']}")
    first = res["first_prompt"] if len(res["first_prompt"]) <= 160 else res["first_prompt"][:157] + "..."
    print(f"  first prompt: {first!r}")
    if res["n_asked"] != res["baseline"]["n"]:
        print(f"  n: the task has {res['baseline']['n']} examples; all are used (asked for {res['n_asked']})")
    if not res["evaluable"]:
        print(f"  NOT EVALUABLE: the baseline ({res['baseline']['accuracy']:.3f}) is not clearly above chance "
              f"({res['chance']:.3f}); no change below can show an effect of the disruption on this task")
    for name in ("baseline", "massive", "control"):
        r = res[name]
        test = "" if name == "baseline" else (
            f"  delta {r['delta']:+.3f} [{r['delta_ci_low']:+.3f}, {r['delta_ci_high']:+.3f}]"
            f"  McNemar b={r['b']} c={r['c']} p={r['p_value']:.3g}")
        print(f"  {name:9s} {r['accuracy']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]  n={r['n']}  "
              f"dims/example={r['n_dims']:.0f}  removed variance={r['removed_variance']:.2%}{test}")
    v = res["massive_vs_control"]
    print(f"  massive vs control (same examples): McNemar b={v['b']} c={v['c']} p={v['p_value']:.3g}")
    if res["kl_match"]:
        m = res["kl_match"]
        print(f"  on neutral text ({m['n_tokens']} tokens): KL massive {m['kl_massive']:.4g} vs control "
              f"x{m['control_scale']:.3g} {m['kl_control']:.4g} ({'matched' if m['matched'] else 'NOT matched'} "
              f"within {m['tol']:.0%}); removed variance {m['removed_variance_massive']:.2%} vs "
              f"{m['removed_variance_control']:.2%}; removed energy {m['removed_energy_massive']:.2%} vs "
              f"{m['removed_energy_control']:.2%}")
    sep = res["separation"]
    if sep is not None:
        print(f"  margin AUROC ({sep['score']}; positive: {sep['positive']}, threshold-free):")
        if "error" in sep:
            print(f"    not computed: {sep['error']}")
        for name in ("baseline", "massive", "control"):
            if name in sep:
                r = sep[name]
                vs = "" if name == "baseline" else f"  DeLong vs baseline p={r['p_vs_baseline']:.3g}"
                print(f"    {name:9s} {r['auroc']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]{vs}")


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

    spec = QuantSpec.of(args.method, args.bits, args.group_size, args.alpha, sites=args.sites, layers=args.layers,
                        draw=args.draw)
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
    from massmech.studies.registry import cell_versions

    if args.action == "ls":
        table = list_cells(args.store, cell_versions())
        if args.json:
            print(table.to_json(orient="records"))
        elif table.empty:
            print(f"{args.store}: no cells")
        else:
            counts = table.groupby(["study", "version", "current"]).size().rename("cells").reset_index()
            print(counts.to_string(index=False))
        return 0
    gone = gc(args.store, cell_versions(), dry_run=args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    print(f"{verb} {len(gone)} stale cell folders" + "".join(f"\n  {p}" for p in gone))
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from massmech.report.pages import render_run, write_page

    chosen = sum(map(bool, (args.runs, args.ledger, args.docs)))
    if chosen != 1:
        raise ConfigError("pass run folders, or --ledger RUNS_ROOT, or --docs RUNS_ROOT (one of them)")
    if args.docs:
        from massmech.report.docs import write_docs
        from massmech.report.ledger import MODELS

        models = tuple(args.models.split(",")) if args.models else MODELS
        for path in write_docs(args.docs, args.out or "docs", models=models, figures_dir=args.figures):
            print(path)
        return 0
    if args.ledger:
        from massmech.report.ledger import MODELS
        from massmech.report.ledger_page import ledger_markdown

        text = ledger_markdown(args.ledger, tuple(args.models.split(",")) if args.models else MODELS)
    else:
        if args.out and len(args.runs) > 1:
            raise ConfigError("--out takes one run folder")
        text = "\n".join(render_run(r) for r in args.runs)
    if args.out:
        print(write_page(args.out, text))
    else:
        print(text, end="")
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
