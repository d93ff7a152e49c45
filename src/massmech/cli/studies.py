"""The study subcommands, one per registered study (:mod:`massmech.studies.registry`), and ``reproduce``.

``massmech <study> --preset P [--field value ...] --out DIR``: the preset's config with the fields
given on the command line (flags derived from the config class), run through the study's runner.
What each prints is here; the numbers come from the run folder's ``summary.json`` and table.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from massmech.cli.flags import config_flags, overrides, study_flags
from massmech.errors import ConfigError

#: per study: config fields the CLI leaves out, extra flag names, and the default executor
_SKIP = {"quant": ("variants",), "twins": ("preset", "variants")}
_ALIASES = {"analyze": {"n_tokens": ("--tokens",), "heatmap_layers": ("--plot-layers",)}}
_HIDDEN = {"analyze": {"heatmap_layers": ("--layers",)}}
_EXECUTOR = {"twins": "processes"}


def add_study_commands(sub: Any, formatter: type, only: str | None) -> None:
    """One subcommand per registered study; its config flags only when it is the command asked for
    (``only``) or for the full parser, so ``massmech --help`` imports no config module."""
    from massmech.studies.registry import studies

    for spec in studies().values():
        p = sub.add_parser(spec.name, aliases=list(spec.aliases), help=spec.help, formatter_class=formatter,
                           description=f"{spec.help}. Presets: " + "; ".join(f"{k}: {v}" for k, v in spec.presets.items()))
        p.add_argument("--preset", default=spec.default_preset, choices=list(spec.presets),
                       help="the starting config: " + "; ".join(f"{k}: {v}" for k, v in spec.presets.items()))
        study_flags(p, executor=_EXECUTOR.get(spec.name, "serial"))
        if only is None or only in spec.kinds:
            config_flags(p, spec.config_class(), skip=_SKIP.get(spec.name, ()) + _placement_fields(spec),
                         aliases=_ALIASES.get(spec.name), hidden=_HIDDEN.get(spec.name))
        p.set_defaults(func=cmd_study, study=spec.name)


def _placement_fields(spec: Any) -> tuple[str, ...]:
    """Config fields that the study flags already give (where a model is put)."""
    import dataclasses

    fields = {f.name for f in dataclasses.fields(spec.config_class())}
    return tuple(sorted(fields & {"dtype", "device", "device_map", "offload_folder"}))


def executor_of(args: argparse.Namespace) -> Any:
    """The executor the flags ask for (checked before any work)."""
    from massmech.infra.executors import resolve_executor

    if args.executor == "serial" and (args.workers or args.address):
        raise ConfigError("--workers and --address need --executor processes or ray")
    if args.address and args.executor != "ray":
        raise ConfigError("--address needs --executor ray")
    return resolve_executor(args.executor, workers=args.workers,
                            **({"address": args.address} if args.executor == "ray" else {}))


def load_options(args: argparse.Namespace) -> dict:
    """Where the models go, checked before any loading."""
    from massmech.core.loading import check_device, check_device_map, resolve_dtype

    check_device_map(args.device_map, check_device(args.device), args.offload_folder)
    resolve_dtype(args.dtype)
    return {"dtype": args.dtype, "device": args.device, "device_map": args.device_map,
            "offload_folder": args.offload_folder}


def cmd_study(args: argparse.Namespace) -> int:
    from massmech.studies.registry import get_study

    spec = get_study(args.study)
    skip = _SKIP.get(spec.name, ()) + _placement_fields(spec)
    cfg = spec.preset(args.preset, **overrides(args, spec.config_class(), skip=skip))
    spec.runner()(cfg, args.out, executor=executor_of(args), cells=args.cells, load_options=load_options(args),
                  overwrite=args.overwrite, progress=not args.json)
    summary = json.loads((Path(args.out) / "summary.json").read_text()) | {"out_dir": str(Path(args.out).resolve())}
    if args.json:
        table = Path(args.out) / "results.parquet"
        if table.is_file():  # the results themselves, not only their counts
            import pandas as pd

            summary["rows"] = json.loads(pd.read_parquet(table).to_json(orient="records"))
        print(json.dumps(summary, indent=2, default=str))
    else:
        print("\n".join(summary_lines(spec.name, summary, Path(args.out))))
    failed = summary.get("failed") or []
    if failed:  # recorded as rows with their reason; the rest finished
        print(f"{len(failed)} cell(s) could not run (rows with an `error` in the table):", file=sys.stderr)
        for f in failed[:20]:
            print(f"  {' / '.join(str(v) for k, v in f.items() if k != 'error')}: {f['error']}", file=sys.stderr)
        return 1
    return 0


def summary_lines(study: str, summary: dict, out: Path) -> list[str]:
    """What a study command prints: the headline of its summary and table."""
    if study == "analyze":
        from massmech.report.tables import analyze_lines

        return analyze_lines(summary, out)
    if study == "ablation":
        import pandas as pd

        from massmech.report.tables import ablation_text

        return ablation_text(pd.read_parquet(out / "results.parquet"), out, summary.get("n_asked"))
    if study == "twins":
        from massmech.report.tables import twins_lines

        return twins_lines(summary, out)
    if study == "attribute":
        lines = [f"{summary['model']}: attention logit advantage at the answer position, mean over the examples, "
                 f"{summary['layers']} layers and every head (logit units) -> {out}"]
        for task, edges in summary["advantage"].items():
            lines += [f"  {task} / {edge}: total {e['total']:+.3f}  ("
                      + "; ".join(f"{g}: {v:+.3f}" for g, v in e["groups"].items()) + ")" for edge, e in edges.items()]
        return lines
    return [f"{study} -> {out}: results.parquet, summary.json"]


def add_reproduce(sub: Any, formatter: type) -> None:
    r = sub.add_parser("reproduce", help="every run the claim ledger reads, then the figures, the ledger and the docs",
                       formatter_class=formatter)
    r.add_argument("--quick", action="store_true",
                   help="each study's quick config into runs/quick, and the docs into a copy there (CI runs this)")
    r.add_argument("--runs", metavar="DIR", help="the runs root (default: runs, or runs/quick with --quick)")
    r.add_argument("--models", metavar="M1,M2", help="the ledger's models (default: the embedded models)")
    from massmech.report.runs import RUNS  # light: no torch

    r.add_argument("--only", metavar="RUN,RUN", help=f"only these runs ({', '.join(RUNS)})")
    r.add_argument("--no-docs", action="store_true", help="make the runs only (no figures, ledger, docs or site)")
    r.add_argument("--executor", default="serial", choices=["serial", "processes", "ray"], help="who computes the cells")
    r.add_argument("--json", action="store_true", help="print what ran, its seconds and the ledger rows left unjudged")
    r.add_argument("--overwrite", action="store_true",
                   help="replace a run folder of another config (e.g. after the ledger's runs changed); cells are kept")
    r.set_defaults(func=cmd_reproduce)


def cmd_reproduce(args: argparse.Namespace) -> int:
    from massmech.report.reproduce import reproduce
    from massmech.report.runs import MODELS

    models = tuple(args.models.split(",")) if args.models else MODELS
    only = tuple(args.only.split(",")) if args.only else ()
    done = reproduce(args.runs, quick=args.quick, models=models, only=only, docs=not args.no_docs,
                     progress=not args.json, executor=args.executor, overwrite=args.overwrite)
    if args.json:
        print(json.dumps({"seconds": done.seconds, "not_judged": done.not_judged,
                          "docs": str(done.docs) if done.docs else None}, indent=2))
    else:
        for folder, s in done.seconds.items():
            print(f"  {folder:42s} {s:8.1f} s")
        print(f"ledger: {len(done.ledger) - len(done.not_judged)} of {len(done.ledger)} rows judged"
              + (f"; not run: {', '.join(done.not_judged)}" if done.not_judged else ""))
        if done.site:
            print(f"docs: {done.docs} -> site {done.site} (mkdocs build --strict passed)")
    return 1 if done.not_judged else 0
