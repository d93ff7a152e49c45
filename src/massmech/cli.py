"""Command line: ``massmech doctor | detect | models``. A thin layer over the library runners."""

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


def _cmd_detect(args: argparse.Namespace) -> int:
    from massmech.jobs import DetectConfig, run_detect

    cfg = DetectConfig(
        model=args.model,
        n_tokens=args.tokens,
        seq_len=args.seq_len,
        batch_size=args.batch_size,
        rule=args.rule,
        lam=args.lam,
        k=args.k,
        mean=args.mean,
        exclude_first_token=args.exclude_first_token,
        seed=args.seed,
    )
    summary = run_detect(cfg, args.out, progress=not args.json)
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"{summary['model']}: {summary['n_tokens']} tokens -> {summary['out_dir']}")
    for key, s in summary["sites"].items():
        share = s["massive_low_half_share"]
        share_s = "n/a" if share is None else f"{share:.0%}"
        print(
            f"  {key:7s} massive dims: {s['massive_count']:5d}   in low-frequency half: {share_s:>4s}"
            f"   first layer: {s['first_layer_with_massive']}"
        )
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="massmech", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("doctor", help="check bridge == HF, RoPE spec == model, hooks fire")
    d.add_argument("--model", default=DEFAULT_MODEL, help=f"model spec (default {DEFAULT_MODEL})")
    d.add_argument("--json", action="store_true", help="print a JSON verdict")
    d.set_defaults(func=_cmd_doctor)

    c = sub.add_parser("detect", help="capture Q/K/V statistics on natural text, detect massive values")
    c.add_argument("--model", default=DEFAULT_MODEL)
    c.add_argument("--out", required=True, help="run folder to write (replaced atomically)")
    c.add_argument("--tokens", type=int, default=4096, help="tokens of BBC news (default 4096)")
    c.add_argument("--seq-len", type=int, default=512)
    c.add_argument("--batch-size", type=int, default=4)
    c.add_argument("--rule", choices=["lambda", "topk"], default="lambda")
    c.add_argument("--lam", type=float, default=5.0)
    c.add_argument("--k", type=int, default=4)
    c.add_argument("--mean", choices=["head", "layer"], default="head")
    c.add_argument("--exclude-first-token", action="store_true")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=_cmd_detect)

    m = sub.add_parser("models", help="list the model specs available offline")
    m.set_defaults(func=lambda a: print("\n".join(available_models())) or 0)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, RuntimeError, OSError, TypeError, IndexError) as err:
        print(f"massmech {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
