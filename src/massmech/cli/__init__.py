"""Command line: ``massmech doctor | analyze | compare | ablate | sweep | quantize | quant-study | twins | cells | models``.

A thin layer over the library runners. The flags of the study commands are derived from their
config dataclasses (:mod:`massmech.cli.flags`), so they cannot drift from the library. Errors
massmech raises on purpose (:class:`~massmech.errors.MassmechError`) print one line and exit with
status 2; anything else is a bug and shows its traceback (``--debug`` shows it always).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import sys
import warnings

from massmech.cli.commands import (
    _cmd_ablate,
    _cmd_analyze,
    _cmd_cells,
    _cmd_compare,
    _cmd_doctor,
    _cmd_models,
    _cmd_quant_study,
    _cmd_quantize,
    _cmd_report,
    _cmd_sweep,
    _cmd_twins,
    _group_size,
)
from massmech.cli.flags import config_flags
from massmech.core.catalog import DEFAULT_MODEL, DTYPE_NAMES
from massmech.errors import MassmechError
from massmech.studies.presets import config_class, names


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
    _placement_flags(p)


def _placement_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device-map", metavar="MAP", help="shard over devices with accelerate instead of --device: auto, "
                   "balanced, sequential, or a JSON object module -> device")
    p.add_argument("--offload-folder", metavar="DIR", help="where --device-map entries 'disk' keep their weights")


def _out_flags(p: argparse.ArgumentParser, what: str, required: bool) -> None:
    p.add_argument("--out", required=required, metavar="DIR",
                   help=f"{what}; must be new, empty, or a previous run of this command (never another folder)")
    p.add_argument("--overwrite", action="store_true", help="replace a previous run of this command in --out")


def _study_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, metavar="DIR",
                   help="study folder: new, or a previous run of this study and config (resumed)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the results of a run of another config in --out (its cells stay; without it: refused)")
    p.add_argument("--cells", metavar="DIR", help="a cell store shared between runs (default: OUT/cells)")
    p.add_argument("--dtype", default="float32", choices=sorted(DTYPE_NAMES),
                   help="weight dtype of every model (not float32: cells of its own)")
    p.add_argument("--device", default=None, help="torch device of every model, e.g. cuda (default: cpu)")
    _placement_flags(p)
    p.add_argument("--executor", default="serial", choices=["serial", "processes", "ray"],  # = infra.executors.EXECUTORS (tested)
                   help="who computes the cells: this process, local processes, or a Ray cluster (pip install 'massmech[ray]')")
    p.add_argument("--workers", type=int, help="--executor processes/ray: workers (default: one per core, or per GPU on Ray)")
    p.add_argument("--address", help="--executor ray: the cluster (auto, HOST:PORT, ray://HOST:10001; default: a local Ray)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The ``massmech`` parser. ``only``: derive config flags for this subcommand alone (the study
    configs import torch; ``massmech --help`` and other commands stay instant)."""

    def full(name: str) -> bool:
        return only is None or only == name

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
    _out_flags(c, "run folder to write (atomically)", required=True)
    c.add_argument("--json", action="store_true", help="print the summary as JSON (per site.stage)")
    c.add_argument("--cells", metavar="DIR", help="keep the capture in this cell store: reruns that change only "
                   "the analysis (lam, bands, figures) reuse it")
    if full("analyze"):
        config_flags(c, config_class("analyze"), aliases={"n_tokens": ("--tokens",), "heatmap_layers": ("--plot-layers",)},
                     hidden={"heatmap_layers": ("--layers",)})
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
    a.add_argument("--task", help="task name (see massmech.causal.tasks.builtin.TASKS)")
    a.add_argument("--task-file", help="your own task: a .jsonl/.json/.csv/.parquet file (instead of --task)")
    a.add_argument("--field", action="append", metavar="NAME=COLUMN",
                   help="--task-file columns, repeatable: question=, answer= (required), context=, choices=, id=")
    a.add_argument("--format", default="exact", choices=["exact", "choice", "yesno", "number"],
                   help="--task-file answers: exact continuation, lettered multiple choice, yes/no, final number")
    a.add_argument("--kind", default="contextual", choices=["contextual", "parametric"], help="--task-file kind")
    a.add_argument("--n-shots", type=int, default=0, help="--task-file demonstrations drawn from the file")
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
    a.add_argument("--control", default="matched",
                   choices=["matched", "lowest", "random", "band-low", "band-mid", "band-high"],
                   help="control dims replaced instead: matched (random non-massive dims removing the same token "
                        "variance per head), or the same count of lowest-norm / random / band dims")
    a.add_argument("--replace", default="mean", choices=["mean", "zero", "pooled_mean"],
                   help="replacement: each dim's prompt mean, zero, or one pooled mean per head (the paper's code)")
    a.add_argument("--kv-cache", default="prefill", choices=["prefill", "every_step"],
                   help="disrupt the prompt only, or every decode step too")
    a.add_argument("--batch-size", type=int, default=16, help="sequences per forward pass (results do not depend on it)")
    a.add_argument("--seed", type=int, default=0, help="seed of the examples and of random controls")
    _out_flags(a, "also write ablate.json, examples.parquet/.csv (per example) and manifest.json", required=False)
    a.add_argument("--json", action="store_true", help="print the result as JSON")
    a.set_defaults(func=_cmd_ablate)

    t = sub.add_parser("twins", help="train RoPE / absolute / NoPE twins and trace where massive values come from",
                       formatter_class=_HELP)
    t.add_argument("--preset", default="demo", choices=names()["twins"] if full("twins") else None, help="tiny, demo (about 15 min on 2 cores) or paper (one GPU)")
    t.add_argument("--out", required=True, help="twins folder (new, or a previous twins run of this config: resumed; "
                   "analysis/ replaced)")
    t.add_argument("--overwrite", action="store_true", help="replace twins trained with another config in --out")
    t.add_argument("--workers", type=int, help="variants trained in parallel (default: one per CPU core)")
    t.add_argument("--executor", default="processes", choices=["serial", "processes", "ray"],
                   help="who trains the variants and analyses the checkpoints (ray: one variant per worker or GPU)")
    t.add_argument("--address", help="--executor ray: the cluster (auto, HOST:PORT; default: a local Ray)")
    t.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    t.add_argument("--json", action="store_true", help="print the summary as JSON")
    if full("twins"):
        config_flags(t, config_class("twins"), skip=("preset", "variants"))
    t.set_defaults(func=_cmd_twins)

    for command, study, default, what, func, skip in (
        ("sweep", "sweep", "main", "an ablation grid (models x tasks x conditions) into one resumable table",
         _cmd_sweep, ()),
        ("quant-study", "quant", "full", "a grid of quantized variants of one model into one resumable table",
         _cmd_quant_study, ("variants",)),
    ):
        w = sub.add_parser(command, help=what, formatter_class=_HELP)
        w.add_argument("--preset", default=default, choices=names()[study] if full(command) else None,
                       help="a preset of massmech.studies.presets")
        _study_flags(w)
        if full(command):
            config_flags(w, config_class(study), skip=skip)
        w.set_defaults(func=func)

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

    g = sub.add_parser("report", help="results pages generated from run folders: one run, the claim ledger, the docs",
                       formatter_class=_HELP)
    g.add_argument("runs", nargs="*", metavar="RUN_DIR", help="run folders to render (one page each)")
    g.add_argument("--markdown", action="store_true", help="print markdown (the default output format)")
    g.add_argument("--ledger", metavar="RUNS_ROOT", help="render the claim ledger from the run folders under RUNS_ROOT")
    g.add_argument("--docs", metavar="RUNS_ROOT", help="regenerate the docs' ledger, results pages and gallery "
                   "(docs/ledger.md, docs/results/, docs/gallery.md) from RUNS_ROOT")
    g.add_argument("--out", metavar="PATH", help="write the page here (atomically; only over a generated page); "
                   "with --docs: the docs folder (default docs)")
    g.add_argument("--models", metavar="M1,M2", help="models of the ledger (default: the embedded models)")
    g.add_argument("--figures", default="figures", metavar="DIR", help="with --docs: what `make figures` wrote")
    g.set_defaults(func=_cmd_report)

    m = sub.add_parser("models", help="the models known by name: installed, extra, random init, size",
                       formatter_class=_HELP)
    m.add_argument("--json", action="store_true", help="print JSON records")
    m.set_defaults(func=_cmd_models)
    return p


_COMMANDS = ("doctor", "analyze", "compare", "ablate", "twins", "sweep", "quant-study", "quantize", "cells", "models")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((a for a in argv if a in _COMMANDS), "")  # only its flags are derived (fast --help)
    args = build_parser(only=command).parse_args(argv)
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
