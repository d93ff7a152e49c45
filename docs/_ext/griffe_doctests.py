"""A Griffe extension for the docs site: massmech's reST-flavoured docstrings read well as Markdown.

massmech's docstrings are Google style with a few reST habits that Markdown would garble:

* bare ``>>>`` examples (doctests, run by ``tests/test_doctests.py``) outside an ``Examples:``
  section: Griffe's Google parser reads ``>>>`` only inside such a section, and Markdown reads
  them as block quotes (and ``x[0]`` in them as link references). They are fenced as ``pycon``;
* reST simple tables (``=====  =====`` borders), which Markdown reads as headings: fenced as text;
* Sphinx roles (``:func:`~massmech.core.detect.massive_mask```): the role is dropped and a
  leading ``~`` keeps the last name only, as Sphinx shows it.

Loaded by ``mkdocs.yml`` (mkdocstrings' ``extensions`` option); tested in ``tests/test_docs.py``.
"""

from __future__ import annotations

import re
from typing import Any

from griffe import Extension, Object

_FLAGS = re.compile(r"\s*#\s*doctest:.*$")
_BORDER = re.compile(r"^\s*=+(\s+=+)+\s*$")
_ROLE = re.compile(r":(?:py:)?(?:func|meth|class|mod|attr|data|exc|obj):`(~?)([^`]+)`")


def _role(match: re.Match) -> str:
    tilde, target = match.groups()
    return f"`{target.rsplit('.', 1)[-1] if tilde else target}`"


def fence(text: str) -> str:
    """``text`` as Markdown: doctest blocks and reST tables fenced, Sphinx roles made code spans.

    A doctest block runs from a ``>>>`` line at the left margin to the next blank line (indented
    lines, e.g. the body of an ``Examples:`` section, are Griffe's own business); a table from
    its first border line to its third. Existing fences are left alone.
    """
    out: list[str] = []
    block: list[str] | None = None
    table: list[str] | None = None
    in_fence = False
    for line in text.split("\n"):
        if block is not None:
            if line.strip():
                block.append(_FLAGS.sub("", line).replace("<BLANKLINE>", ""))
                continue
            out += ["```pycon", *block, "```"]
            block = None
        if table is not None:
            table.append(line)
            if sum(bool(_BORDER.match(t)) for t in table) == 3:
                out += ["```text", *table, "```"]
                table = None
            continue
        if line.startswith("```"):
            in_fence = not in_fence
        elif not in_fence and line.startswith(">>>"):
            if out and out[-1].strip():
                out.append("")  # a fence must not continue a paragraph
            block = [_FLAGS.sub("", line)]
            continue
        elif not in_fence and _BORDER.match(line):
            table = [line]
            continue
        out.append(line if in_fence else _ROLE.sub(_role, line))
    if block is not None:
        out += ["```pycon", *block, "```"]
    if table is not None:  # not a complete table after all
        out += table
    return "\n".join(out)


class DoctestBlocks(Extension):
    """Apply :func:`fence` to every docstring."""

    def on_object(self, *, obj: Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = fence(obj.docstring.value)
