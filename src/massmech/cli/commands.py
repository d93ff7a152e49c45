"""What each ``massmech`` subcommand does: thin calls into the library, and the text it prints."""

from __future__ import annotations

import argparse
import ast
import json
from pathlib import Path

from massmech.cli.flags import overrides
from massmech.core.catalog import model_catalog
from massmech.errors import ConfigError


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


def _cmd_analyze(args: argparse.Namespace) -> int:
    from massmech.studies.analyze import AnalyzeConfig, run_analyze

    cfg = AnalyzeConfig(**overrides(args, AnalyzeConfig))
    summary = run_analyze(cfg, args.out, overwrite=args.overwrite, cells=args.cells, progress=not args.json)
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"{summary['model']}: {summary['n_tokens']} tokens of {summary['corpus']}, context "
          f"{summary['context_len']} -> {summary['out_dir']}")
    print(f"  {'':7s} {'massive':>7s} {'low-band energy':>15s} {'low-half energy':>15s} {'massive in low band':>19s}")
    for key, s in summary["by_stage"].items():
        share = s["massive_low_band_share"]
        print(f"  {key:7s} {s['massive_count']:7d} {s['low_band_energy_fraction']:15.1%} "
              f"{s['low_half_energy_fraction']:15.1%} {'n/a' if share is None else f'{share:.1%}':>19s}")
    from massmech.report.tables import emergence_lines

    for line in emergence_lines(summary):
        print("  " + line)
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
    if bool(args.task) == bool(args.task_file):
        raise ConfigError("pass one of --task NAME or --task-file PATH")
    if args.task_file:
        from massmech.causal.tasks.custom import task_from_spec

        task = task_from_spec(args.task_file, args.field or [], format=args.format, kind=args.kind, n_shots=args.n_shots)
    else:
        task = get_task(args.task, **params)
    task.examples(args.n, args.seed)  # bad task or n: fail before loading a model
    if args.out:
        check_out(args.out, "ablate", overwrite=args.overwrite)
    from massmech.core.loading import load_model

    model = load_model(args.model, dtype=args.dtype, device=args.device, device_map=args.device_map,
                       offload_folder=args.offload_folder)
    layers = layer_range(args.disrupt_layers, model.info.n_layers)
    d = Disruption(
        target=args.target, stage=args.stage, rule=args.rule, lam=args.lam, k=args.k,
        layers=layers, kv_cache=args.kv_cache, seed=args.seed, replace=args.replace,
    )
    res = ablate(model, task, n=args.n, disruption=d, control=args.control, seed=args.seed,
                 batch_size=args.batch_size, task_params=params, out=args.out, overwrite=args.overwrite,
                 progress=not args.json)
    if args.json:
        print(json.dumps(res, indent=2))
        return 0
    print(f"{res['model']} / {res['task']} ({res['kind']}), disruption {res['condition']}, control {res['control_kind']}")
    print(f"  protocol: {res['protocol']}")
    for name in ("baseline", "massive", "control"):
        r = res[name]
        test = "" if name == "baseline" else (
            f"  delta {r['delta']:+.3f} [{r['delta_ci_low']:+.3f}, {r['delta_ci_high']:+.3f}]"
            f"  McNemar b={r['b']} c={r['c']} p={r['p_value']:.3g}")
        print(f"  {name:9s} {r['accuracy']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]  n={r['n']}  "
              f"dims/example={r['n_dims']:.0f}  removed variance={r['removed_variance']:.2%}{test}")
    return 0


def _cmd_twins(args: argparse.Namespace) -> int:
    import os

    from massmech.infra.executors import resolve_executor
    from massmech.studies.presets import config_class, preset
    from massmech.studies.twins.study import run_twins

    given = overrides(args, config_class("twins"), skip=("preset", "variants"))
    if "steps" in given and "checkpoints" not in given:  # a shorter run keeps the checkpoints it reaches
        given["checkpoints"] = tuple(s for s in preset("twins", args.preset).checkpoints if s <= given["steps"])
    cfg = preset("twins", args.preset, **given)
    if args.address and args.executor != "ray":
        raise ConfigError("--address needs --executor ray")
    if args.executor == "serial":
        executor = resolve_executor("serial")
    elif args.executor == "processes":
        executor = resolve_executor("processes", workers=args.workers or min(len(cfg.variants), os.cpu_count() or 1))
    else:
        executor = resolve_executor("ray", workers=args.workers, address=args.address)
    summary = run_twins(cfg, args.out, device=args.device, executor=executor, progress=not args.json,
                        overwrite=args.overwrite)
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
        from massmech.report.ledger import MODELS, ledger_markdown

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


def _run_study(args: argparse.Namespace, study: str, skip: tuple[str, ...] = ()) -> dict:
    from massmech.infra.executors import resolve_executor
    from massmech.studies.presets import config_class, preset

    cfg = preset(study, args.preset, **overrides(args, config_class(study), skip=skip))
    if args.executor == "serial" and (args.workers or args.address):
        raise ConfigError("--workers and --address need --executor processes or ray")
    if args.address and args.executor != "ray":
        raise ConfigError("--address needs --executor ray")
    executor = resolve_executor(args.executor, workers=args.workers,
                                **({"address": args.address} if args.executor == "ray" else {}))
    from massmech.core.loading import check_device, check_device_map, resolve_dtype

    check_device_map(args.device_map, check_device(args.device), args.offload_folder)
    resolve_dtype(args.dtype)
    load = {"dtype": args.dtype, "device": args.device, "device_map": args.device_map,
            "offload_folder": args.offload_folder}
    if study == "sweep":
        from massmech.studies.ablation import run_sweep

        run_sweep(cfg, args.out, cells=args.cells, executor=executor, load_options=load, progress=not args.json,
                  overwrite=args.overwrite)
    else:
        from massmech.infra.study import Context, run_study
        from massmech.studies.quant.study import QUANT

        run_study(QUANT, cfg, args.out, cells=args.cells, executor=executor, ctx=Context(load_options=load),
                  progress=not args.json, overwrite=args.overwrite)
    summary = json.loads((Path(args.out) / "summary.json").read_text())
    print(json.dumps(summary, indent=2) if args.json else f"{study} ({args.preset}) -> {args.out}: results.parquet, summary.json")
    return summary


def _cmd_sweep(args: argparse.Namespace) -> int:
    _run_study(args, "sweep")
    return 0


def _cmd_quant_study(args: argparse.Namespace) -> int:
    _run_study(args, "quant", skip=("variants",))
    return 0
