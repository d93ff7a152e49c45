"""Command-line flags derived from a study's config dataclass, so the CLI cannot drift from it.

Every field becomes ``--field-name`` (underscores become dashes), typed from its default: tuples
take values separated by commas or spaces (``--ks 1,4`` or ``--ks 1 4``), booleans take
``--flag/--no-flag``. A flag left out keeps the
preset's value; the help shows the dataclass default and the field's line of the config's
``Attributes:`` docstring.

>>> import argparse, dataclasses
>>> @dataclasses.dataclass(frozen=True)
... class Demo:
...     '''Attributes:
...         n: Examples.
...         ks: k values.
...     '''
...     n: int = 10
...     ks: tuple[int, ...] = (1, 4)
>>> p = argparse.ArgumentParser()
>>> config_flags(p, Demo)
>>> overrides(p.parse_args(["--ks", "2,8"]), Demo)
{'ks': (2, 8)}
"""

from __future__ import annotations

import argparse
import dataclasses
import re
from typing import Any

_ELEMENT = {"int": int, "float": float, "str": str}


def _field_docs(cls: type) -> dict[str, str]:
    """``name -> help`` from the ``Attributes:`` section (``a, b: text`` documents both)."""
    doc = cls.__doc__ or ""
    if "Attributes:" not in doc:
        return {}
    docs: dict[str, str] = {}
    current: list[str] = []
    for line in doc.split("Attributes:", 1)[1].splitlines():
        m = re.match(r"^\s{4,8}([a-z_][a-z0-9_, ]*):\s*(.*)$", line)
        if m:
            current = [n.strip() for n in m.group(1).split(",")]
            for n in current:
                docs[n] = m.group(2).strip()
        elif line.strip() and current:
            for n in current:
                docs[n] += " " + line.strip()
        elif not line.strip() and docs:
            current = []
    return {k: plain(v) for k, v in docs.items()}


def plain(text: str) -> str:
    """Docstring text as a person reads it in ``--help``: Sphinx roles and backquotes removed,
    a ``~pkg.mod.Name`` reference shown as ``Name``.

    >>> plain("See :class:`~massmech.causal.intervention.Disruption` and ``lam``.")
    'See Disruption and lam.'
    """
    text = re.sub(r":[a-z]+:`~?([\w.]+)`", lambda m: m.group(1).rsplit(".", 1)[-1], text)
    return text.replace("``", "").replace("`", "")


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None


def _element(f: dataclasses.Field, default: Any) -> type:
    """Element type of a tuple field, from its annotation (or its default)."""
    hint = str(f.type)
    for name, typ in _ELEMENT.items():
        if re.search(rf"\b{name}\b", hint):
            return typ
    return type(default[0]) if default else str


def _parser_of(f: dataclasses.Field, default: Any):
    choices = tuple(f.metadata.get("choices", ()))
    if isinstance(default, (tuple, list)):
        elem = _element(f, default)

        def parse(text: str) -> tuple:
            try:
                values = tuple(elem(x.strip()) for x in text.split(",") if x.strip())
            except ValueError:
                raise argparse.ArgumentTypeError(f"expected comma-separated {elem.__name__}s, got {text!r}") from None
            bad = [v for v in values if choices and v not in choices]
            if bad:
                raise argparse.ArgumentTypeError(f"{', '.join(map(str, bad))} not among {', '.join(map(str, choices))}")
            return values

        return parse, elem.__name__.upper()
    hint = str(f.type)
    for name in ("int", "float"):
        if isinstance(default, _ELEMENT[name]) and not isinstance(default, bool) or re.fullmatch(rf"{name}( \| None)?", hint):
            return _ELEMENT[name], name.upper()
    return str, "TEXT"


def _help(f: dataclasses.Field, docs: dict[str, str], default: Any) -> str:
    """The field's line of the ``Attributes:`` docstring, its choices and its default."""
    shown = ",".join(map(str, default)) if isinstance(default, (tuple, list)) else default
    choices = tuple(f.metadata.get("choices", ()))
    text = docs.get(f.name, f.name.replace("_", " "))
    if choices:
        text += f" (one{' or more' if isinstance(default, (tuple, list)) else ''} of: {', '.join(map(str, choices))})"
    return f"{text} (default: {shown if shown not in ('', None) else 'none'})".replace("%", "%%")


def config_flags(parser: argparse.ArgumentParser, cls: type, *, skip: tuple[str, ...] = (),
                 aliases: dict[str, tuple[str, ...]] | None = None, hidden: dict[str, tuple[str, ...]] | None = None) -> None:
    """Add one flag per field of ``cls`` (except ``skip``) to ``parser``; see the module docstring.

    Args:
        aliases: Extra visible flag names per field.
        hidden: Old flag names per field that still work but are not shown.
    """
    docs = _field_docs(cls)
    group = parser.add_argument_group(f"{cls.__name__} fields (default: the preset's value)")
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        default = _default(f)
        names = ["--" + f.name.replace("_", "-"), *(aliases or {}).get(f.name, ())]
        text = _help(f, docs, default)
        if isinstance(default, bool):
            group.add_argument(*names, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=text)
        else:
            typ, metavar = _parser_of(f, default)
            many = {"nargs": "+"} if isinstance(default, (tuple, list)) else {}
            scalar_choices = {} if many or not f.metadata.get("choices") else {"choices": tuple(f.metadata["choices"])}
            if scalar_choices:
                metavar = "{" + ",".join(map(str, scalar_choices["choices"])) + "}"
            group.add_argument(*names, dest=f.name, type=typ, metavar=metavar, default=None, help=text, **many,
                               **scalar_choices)
        for old in (hidden or {}).get(f.name, ()):
            if isinstance(default, bool):
                parser.add_argument(old, dest=f.name, action="store_true", default=None, help=argparse.SUPPRESS)
            else:
                typ = _parser_of(f, default)[0]
                many = {"nargs": "*"} if isinstance(default, (tuple, list)) else {}
                parser.add_argument(old, dest=f.name, type=typ, default=None, help=argparse.SUPPRESS, **many)


def overrides(args: argparse.Namespace, cls: type, *, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """The fields of ``cls`` given on the command line (flags left out are not included)."""
    out = {}
    for f in dataclasses.fields(cls):
        value = getattr(args, f.name, None)
        if f.name in skip or value is None:
            continue
        if isinstance(value, list):  # nargs: each token is a comma-separated tuple
            value = tuple(x for part in value for x in part)
        out[f.name] = value
    return out


# ----------------------------------------------------------------------------- shared flag groups
DTYPES = ("float32", "bfloat16", "float16", "fp32", "bf16", "fp16")  # = core.catalog.DTYPE_NAMES (tested)


def model_flags(p: argparse.ArgumentParser, default: str) -> None:
    """``--model`` and where it is put (``--dtype``, ``--device``, ``--device-map``, ``--offload-folder``)."""
    p.add_argument("--model", default=default, metavar="SPEC",
                   help="embedded name (see `massmech models`), .gguf path, local model folder or hub id org/name")
    placement_flags(p)


def placement_flags(p: argparse.ArgumentParser, what: str = "the model") -> None:
    p.add_argument("--dtype", default="float32", choices=DTYPES,
                   help=f"weight dtype of {what} (not float32: cells of its own)")
    p.add_argument("--device", default=None, metavar="DEV", help=f"torch device of {what}: cpu, cuda, cuda:1, mps "
                   "(default: cpu)")
    p.add_argument("--device-map", metavar="MAP", help="shard over devices with accelerate instead of --device: auto, "
                   "balanced, sequential, or a JSON object module -> device")
    p.add_argument("--offload-folder", metavar="DIR", help="folder for the weights of modules that --device-map puts "
                   "on 'disk'")


def out_flags(p: argparse.ArgumentParser, what: str, required: bool) -> None:
    p.add_argument("--out", required=required, metavar="DIR",
                   help=f"{what}; must be new, empty, or a previous run of this command (never another folder)")
    p.add_argument("--overwrite", action="store_true", help="replace a previous run of this command in --out")


EXECUTOR_HELP = {"serial": "this process", "processes": "local worker processes",
                 "ray": "a Ray cluster (pip install 'massmech[ray]')"}


def study_flags(p: argparse.ArgumentParser, executor: str = "serial") -> None:
    """What every study command takes: its folder, cell store, placement, executor, --json."""
    p.add_argument("--out", required=True, metavar="DIR",
                   help="study folder: new, or a previous run of this study and config (resumed)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the results of a run of another config in --out (its cells stay; without it: refused)")
    p.add_argument("--cells", metavar="DIR", help="a cell store shared between runs, or another run's RUN/cells (default: OUT/cells)")
    placement_flags(p, "every model")
    p.add_argument("--executor", default=executor, choices=list(EXECUTOR_HELP),
                   help="who computes the cells: " + "; ".join(f"{k}: {v}" for k, v in EXECUTOR_HELP.items()))
    p.add_argument("--workers", type=int, help="--executor processes/ray: workers (default: one per core, or per GPU on Ray)")
    p.add_argument("--address", help="--executor ray: the cluster (auto, HOST:PORT, ray://HOST:10001; default: a local Ray)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
