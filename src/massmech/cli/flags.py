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
    return {k: v.replace("``", "").replace(":func:", "").replace(":class:", "").replace(":mod:", "").replace(":data:", "").replace("`", "")
            for k, v in docs.items()}


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
    if isinstance(default, (tuple, list)):
        elem = _element(f, default)

        def parse(text: str) -> tuple:
            try:
                return tuple(elem(x.strip()) for x in text.split(",") if x.strip())
            except ValueError:
                raise argparse.ArgumentTypeError(f"expected comma-separated {elem.__name__}s, got {text!r}") from None

        return parse, elem.__name__.upper()
    hint = str(f.type)
    for name in ("int", "float"):
        if isinstance(default, _ELEMENT[name]) and not isinstance(default, bool) or re.fullmatch(rf"{name}( \| None)?", hint):
            return _ELEMENT[name], name.upper()
    return str, "TEXT"


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
        shown = ",".join(map(str, default)) if isinstance(default, (tuple, list)) else default
        text = f"{docs.get(f.name, f.name)} (default: {shown if shown not in ('', None) else 'none'})".replace("%", "%%")
        if isinstance(default, bool):
            group.add_argument(*names, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=text)
        else:
            typ, metavar = _parser_of(f, default)
            many = {"nargs": "+"} if isinstance(default, (tuple, list)) else {}
            group.add_argument(*names, dest=f.name, type=typ, metavar=metavar, default=None, help=text, **many)
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
