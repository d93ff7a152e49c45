"""Figure style shared by every massmech figure: seaborn paper context, colorblind palette, PDF (fonttype 42) + PNG."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib
import matplotlib.patches  # noqa: E402,F401
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402,F401
import numpy as np
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from massmech.errors import AnalysisError

matplotlib.use("Agg")

SITE_LABEL = {"q": "Q", "k": "K", "v": "V"}
MAGNITUDE_CMAP = "rocket_r"


def use_style() -> None:
    """The package's figure style (call before drawing your own figures)."""
    sns.set_theme(context="paper", style="ticks", palette="colorblind", font_scale=1.1)
    matplotlib.rcParams.update(
        {"pdf.fonttype": 42, "ps.fonttype": 42, "savefig.dpi": 200, "savefig.bbox": "tight"}
    )


def save(fig: plt.Figure, out: str | os.PathLike | None) -> plt.Figure:
    """Write ``out.pdf`` and ``out.png`` (no-op for ``out=None``)."""
    if out is not None:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out.with_suffix(".pdf"))
        fig.savefig(out.with_suffix(".png"))
    return fig


def select_model(table: pd.DataFrame, model: str | None):
    """The rows of ``model`` (default: the table's only model)."""
    models = list(dict.fromkeys(table.model))
    if model is None:
        if len(models) != 1:
            raise AnalysisError(f"the table holds several models {models}: pass model=")
        model = models[0]
    if model not in models:
        raise AnalysisError(f"model {model!r} not in the table; it holds {models}")
    return table[table.model == model], model


def ci_err(value, low, high) -> list:
    """``yerr`` for matplotlib from a value and its interval, never negative (a bootstrap interval
    may exclude its point estimate; rounding may put a bound a hair past it)."""
    value, low, high = (np.asarray(a, dtype=float) for a in (value, low, high))
    return [np.clip(value - low, 0, None), np.clip(high - value, 0, None)]


def close_all() -> None:
    """Close every open figure (long scripts that draw many figures call this between them)."""
    plt.close("all")
