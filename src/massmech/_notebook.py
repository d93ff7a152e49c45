"""Notebook helpers: short reprs and small HTML summaries."""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence


def span(values: Sequence[int], max_items: int = 6) -> str:
    """``0..29 (30)`` for a contiguous ascending run, else a short list ``[0, 3, 7]``."""
    v = list(values)
    if len(v) >= 2 and v == list(range(v[0], v[0] + len(v))):
        return f"{v[0]}..{v[-1]} ({len(v)})"
    if len(v) <= max_items:
        return "[" + ", ".join(map(str, v)) + "]"
    return "[" + ", ".join(map(str, v[:3])) + ", ..., " + ", ".join(map(str, v[-2:])) + f"] ({len(v)})"


def distinct(values: Iterable[float], max_items: int = 4) -> str:
    """Sorted distinct values at 3 significant digits: ``[1e+04, 1e+06]``."""
    v = sorted({f"{x:.3g}" for x in values}, key=lambda t: (t == "nan", float(t)))  # NaN last
    text = ", ".join(v[:max_items])
    return f"[{text}{', ...' if len(v) > max_items else ''}]"


def html_table(title: str, rows: dict[str, object], extra: str = "") -> str:
    """A two-column HTML table (name, value) under a bold title, then ``extra`` (raw HTML)."""
    body = "".join(
        f"<tr><th style='text-align:left'>{html.escape(k)}</th>"
        f"<td style='text-align:left'>{html.escape(str(v))}</td></tr>"
        for k, v in rows.items()
    )
    return f"<div><b>{html.escape(title)}</b><table>{body}</table>{extra}</div>"
