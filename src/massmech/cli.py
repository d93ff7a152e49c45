"""Command line: ``massmech doctor | analyze | ablate | twins | quantize | models``. A thin layer over the library runners."""

from __future__ import annotations

import argparse
import json
import sys

from massmech.models import DEFAULT_MODEL, available_models


def _cmd_doctor(args: argparse.Namespace) -> int:
    from massmech.doctor import doctor

    verdict = doctor(args.model)
    if args.json:
        print(json.dumps(verdict, indent=2))
    else:
        print(f"model: {verdict['model']['name']} ({verdict['model']['source']})")
        print(f"max |bridge - HF| logit diff: {verdict['max_abs_logit_diff']:.3e}")
        if verdict["rope_bases"]:
            bases = sorted({round(b, 1) for b in verdict["rope_bases"]})
            print(f"RoPE bases (per-layer, distinct): {bases}  layout: {verdict['rope']['layout']}")
        for name, ok in verdict["checks"].items():
            print(f"  [{'ok' if ok else 'FAIL'}] {name}" + (f": {verdict['errors'][name]}" if not ok else ""))
        print("OK" if verdict["ok"] else "FAILED")
    return 0 if verdict["ok"] else 1


def _cmd_analyze(args: argparse.Namespace) -> int:
    from massmech.jobs import AnalyzeConfig, run_analyze

    cfg = AnalyzeConfig(
        model=args.model,
        n_tokens=args.tokens,
        seq_len=args.seq_len,
        batch_size=args.batch_size,
        lam=args.lam,
        heatmap_layers=tuple(args.layers or ()),
        exclude_first_token=args.exclude_first_token,
        seed=args.seed,
    )
    summary = run_analyze(cfg, args.out, progress=not args.json)
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"{summary['model']}: {summary['n_tokens']} tokens, context {summary['context_len']} -> {summary['out_dir']}")
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


def _cmd_ablate(args: argparse.Namespace) -> int:
    from massmech.interventions import Disruption
    from massmech.runs import atomic_run_dir, check_writable, manifest, write_json
    from massmech.sweeps import ablate, layer_range
    from massmech.tasks import get_task

    if args.out:
        check_writable(args.out)
    get_task(args.task).examples(args.n, args.seed)  # bad task or n: fail before loading a model
    layers = None
    if args.layers != "all":
        from massmech.models import load_model

        model = load_model(args.model)
        layers = layer_range(args.layers, model.info.n_layers)
    else:
        model = args.model
    d = Disruption(
        target=args.target, stage=args.stage, rule=args.rule, lam=args.lam, k=args.k,
        layers=layers, kv_cache=args.kv_cache, seed=args.seed,
    )
    res = ablate(model, args.task, n=args.n, disruption=d, control=args.control, seed=args.seed,
                 batch_size=args.batch_size, progress=not args.json)
    if args.out:
        with atomic_run_dir(args.out) as tmp:
            write_json(tmp / "ablate.json", res)
            write_json(tmp / "manifest.json", manifest(vars(args) | {"func": None}, seed=args.seed))
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

    from massmech.twin_study import run_twins
    from massmech.twin_train import preset

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

    from massmech.quant_study import (
        DEFAULT_TASKS,
        QuantSpec,
        QuantStudyConfig,
        run_quant_study,
        summary_json,
    )

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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="massmech", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("doctor", help="check bridge == HF, RoPE spec == model, hooks fire")
    d.add_argument("--model", default=DEFAULT_MODEL, help=f"model spec (default {DEFAULT_MODEL})")
    d.add_argument("--json", action="store_true", help="print a JSON verdict")
    d.set_defaults(func=_cmd_doctor)

    c = sub.add_parser("analyze", help="the main job: Q/K/V statistics on natural text, frequency analysis, figures")
    c.add_argument("--model", default=DEFAULT_MODEL)
    c.add_argument("--out", required=True, help="run folder to write (replaced atomically)")
    c.add_argument("--tokens", type=int, default=4096, help="tokens of BBC news (default 4096)")
    c.add_argument("--seq-len", type=int, default=512, help="window length = context of the bands")
    c.add_argument("--batch-size", type=int, default=4)
    c.add_argument("--lam", type=float, default=5.0)
    c.add_argument("--layers", type=int, nargs="*", help="heatmap/spectrum layers (default first, middle, last)")
    c.add_argument("--exclude-first-token", action="store_true")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=_cmd_analyze)

    a = sub.add_parser("ablate", help="baseline vs massive-disrupted vs control accuracy on one task")
    a.add_argument("--model", default=DEFAULT_MODEL)
    a.add_argument("--task", required=True, help="task name (see massmech.tasks)")
    a.add_argument("--n", type=int, default=100, help="examples (default 100)")
    a.add_argument("--target", default="qk", choices=["q", "k", "qk"])
    a.add_argument("--stage", default="pre", choices=["pre", "post"])
    a.add_argument("--rule", default="lambda", choices=["lambda", "topk"])
    a.add_argument("--lam", type=float, default=5.0)
    a.add_argument("--k", type=int, default=4)
    a.add_argument("--layers", default="all", help="all, early, middle, late or 'a-b'")
    a.add_argument("--control", default="lowest", choices=["lowest", "random", "band-low", "band-mid", "band-high"])
    a.add_argument("--kv-cache", default="prefill", choices=["prefill", "every_step"])
    a.add_argument("--batch-size", type=int, default=16)
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--out", help="also write ablate.json + manifest.json to this run folder")
    a.add_argument("--json", action="store_true")
    a.set_defaults(func=_cmd_ablate)

    t = sub.add_parser("twins", help="train RoPE / absolute / NoPE twins and trace where massive values come from")
    t.add_argument("--preset", default="demo", help="tiny, demo (about 15 min on 2 cores) or paper (one GPU)")
    t.add_argument("--out", required=True, help="twins folder (checkpoints; resumed if present; analysis/ replaced)")
    t.add_argument("--workers", type=int, help="variants trained in parallel (default: one per CPU core)")
    t.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    t.add_argument("--steps", type=int, help="override the preset's training steps")
    t.add_argument("--seed", type=int, help="override the preset's seed")
    t.add_argument("--json", action="store_true")
    t.set_defaults(func=_cmd_twins)

    q = sub.add_parser("quantize", help="one quantized variant: massive-value preservation, task accuracy, perplexity")
    q.add_argument("--model", default=DEFAULT_MODEL)
    q.add_argument("--method", required=True, help="rtn, gptq, awq, smoothquant, w8a8-naive, gguf-q8_0|q5_0|q4_1|q4_0, "
                   "kv-per-token, kv-per-channel, kv-massive-aware")
    q.add_argument("--bits", type=int, help="bits (default: 4 weight-only, 8 for W8A8, 4 for KV)")
    q.add_argument("--group-size", type=_group_size, default="auto", help="input weights per scale for rtn/gptq/awq; 'none' = per row "
                   "(default: 64 at 4 bits, per row at 8)")
    q.add_argument("--alpha", type=float, default=0.5, help="SmoothQuant migration strength (default 0.5)")
    q.add_argument("--tasks", help="comma-separated task names (default: country_capital, city_country, "
                   "passkey, kv_lookup, knowledge_conflict)")
    q.add_argument("--n", type=int, default=40, help="examples per task (default 40)")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--out", help="also keep the study folder (results.parquet, manifest.json) here")
    q.add_argument("--json", action="store_true", help="print JSON: massive_recall, perplexity, tasks, preservation, ...")
    q.set_defaults(func=_cmd_quantize)

    m = sub.add_parser("models", help="list the model specs available offline")
    m.set_defaults(func=lambda a: print("\n".join(available_models())) or 0)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, RuntimeError, OSError, TypeError, IndexError, KeyError, ImportError) as err:
        print(f"massmech {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
