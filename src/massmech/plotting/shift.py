"""Figures of the position-shift study (:mod:`massmech.studies.shift`)."""

from __future__ import annotations

import os

import matplotlib.pyplot as plt
import pandas as pd

from massmech.plotting.style import save, select_model, use_style

BAND_ORDER = ["high", "mid", "low", "unrotated"]
MEASURE_TITLE = {"logit": "attention-logit contributions", "q": "Q before RoPE", "k": "K before RoPE"}


def shift_curve(rel: pd.DataFrame, *, model: str | None = None, out: str | os.PathLike | None = None) -> plt.Figure:
    """Relative change of each band against the shift: median over layers, with the interquartile range.

    Args:
        rel: :func:`massmech.core.shift.relative_changes` by ``shift``, with a ``model`` column.

    >>> rel = pd.DataFrame(dict(model="m", shift=[16, 16, 64, 64], layer=0, measure="q", band=["low", "high"] * 2,
    ...                         relative=[0.1, 0.3, 0.2, 0.5]))
    >>> len(shift_curve(rel).axes)
    1
    """
    use_style()
    rel, model = select_model(rel, model)
    measures = [m for m in MEASURE_TITLE if m in set(rel.measure)]
    fig, axes = plt.subplots(1, len(measures), figsize=(3.2 * len(measures), 2.8), squeeze=False, sharex=True)
    palette = dict(zip(BAND_ORDER, plt.rcParams["axes.prop_cycle"].by_key()["color"], strict=False))
    for ax, measure in zip(axes[0], measures, strict=True):
        d = rel[rel.measure == measure]
        for band in [b for b in BAND_ORDER if b in set(d.band)]:
            g = d[d.band == band].groupby("shift").relative
            q = g.quantile([0.25, 0.5, 0.75]).unstack()
            ax.plot(q.index, q[0.5], marker="o", color=palette[band], label=band)
            ax.fill_between(q.index, q[0.25], q[0.75], color=palette[band], alpha=0.2, linewidth=0)
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted(set(d["shift"])), [str(x) for x in sorted(set(d["shift"]))])
        ax.minorticks_off()
        ax.set_title(MEASURE_TITLE[measure])
        ax.set_xlabel("shift (tokens prepended)")
    axes[0][0].set_ylabel("relative change (median over layers)")
    axes[0][-1].legend(title="RoPE band", frameon=False)
    fig.suptitle(f"{model}: the same text moved later", y=1.03)
    return save(fig, out)
