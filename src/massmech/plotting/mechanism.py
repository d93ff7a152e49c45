"""Figures of the mechanism studies: the position shift (:mod:`massmech.studies.shift`), the retrieval heads
(:mod:`massmech.studies.heads`) and the band attribution (:mod:`massmech.studies.attribute`)."""

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


def heads_figure(ranking: pd.DataFrame, results: pd.DataFrame, *, task: str, model: str = "",
                 out: str | os.PathLike | None = None) -> plt.Figure:
    """Left: per layer and head, the needle advantage the massive pairs carry (the top heads
    outlined); right: accuracy under each condition with its interval.

    Args:
        ranking: :func:`massmech.causal.retrieval.rank_heads` rows with a ``role`` column (``top``).
        results: Per condition ``accuracy``, ``ci_low``, ``ci_high`` (``condition`` names).

    >>> rk = pd.DataFrame(dict(layer=[0, 0, 1, 1], head=[0, 1, 0, 1], score=[0.1, 2.0, 0.3, 0.0],
    ...                        role=["", "top", "other-0", ""]))
    >>> res = pd.DataFrame(dict(condition=["baseline", "top", "other-0"], accuracy=[0.9, 0.2, 0.8],
    ...                         ci_low=[0.8, 0.1, 0.7], ci_high=[1.0, 0.3, 0.9]))
    >>> len(heads_figure(rk, res, task="passkey").axes)
    3
    """
    from massmech.plotting.style import ci_err

    use_style()
    grid = ranking.pivot_table(index="layer", columns="head", values="score")
    fig, (left, right) = plt.subplots(1, 2, figsize=(9.5, 3.6), gridspec_kw={"width_ratios": [1.3, 1], "wspace": 0.5})
    lim = float(abs(grid.values).max()) or 1.0
    im = left.imshow(grid.values, aspect="auto", cmap="vlag", vmin=-lim, vmax=lim, origin="lower")
    fig.colorbar(im, ax=left, label="massive pairs' needle advantage")
    for r in ranking[ranking.role == "top"].itertuples():
        left.add_patch(plt.Rectangle((r.head - 0.5, r.layer - 0.5), 1, 1, fill=False, lw=1.5, color="black"))
    left.set_xlabel("head")
    left.set_ylabel("layer")
    left.set_title("ranked heads (top outlined)")
    x = range(len(results))
    right.bar(x, results.accuracy, yerr=ci_err(results.accuracy, results.ci_low, results.ci_high), capsize=3,
              color=["0.6" if c == "baseline" else "C3" if c == "top" else "C0" for c in results.condition])
    right.set_xticks(list(x), list(results.condition), rotation=45, ha="right")
    right.set_ylabel("accuracy")
    right.set_ylim(0, 1)
    right.set_title("Q's massive pairs replaced in")
    fig.suptitle(f"{model} {task}: retrieval heads".strip(), y=1.03)
    return save(fig, out)


EDGE_TITLE = {"needle": "retrieval: needle vs other tokens", "sink": "sink: first token vs the rest"}


def band_heatmap(bands: pd.DataFrame, *, task: str = "", model: str = "",
                 out: str | os.PathLike | None = None) -> plt.Figure:
    """Per edge (retrieval, sink), a layer x RoPE band heat map of the logit advantage each band carries
    (mean over examples and heads; each panel's colour scale centred on 0), with the share of the edge's
    total that the band carries over all layers in the column labels, and the band's share of the pairs
    (its base rate) beneath.

    Args:
        bands: :func:`massmech.causal.retrieval.summarize_edges` rows of one task (``grouping == "band"``
            rows are drawn).

    >>> b = pd.DataFrame(dict(edge=["needle"] * 4 + ["sink"] * 4, grouping="band", group=["low", "high"] * 4,
    ...                       layer=[0, 0, 1, 1] * 2, advantage=[2.0, 0.1, 1.0, -0.2, 5.0, 0.3, 4.0, 0.0],
    ...                       total=[2.1, 2.1, 0.8, 0.8, 5.3, 5.3, 4.0, 4.0]))
    >>> len(band_heatmap(b, task="passkey").axes)  # two panels and their colour bars
    4
    """
    use_style()
    d = bands[bands.grouping == "band"]
    edges = [e for e in EDGE_TITLE if e in set(d.edge)]
    fig, axes = plt.subplots(1, len(edges), figsize=(3.8 * len(edges), 0.5 + 0.16 * d.layer.nunique() + 1.6),
                             squeeze=False, gridspec_kw={"wspace": 0.55})
    for i, (ax, edge) in enumerate(zip(axes[0], edges, strict=True)):
        e = d[d.edge == edge]
        cols = [b for b in BAND_ORDER if b in set(e.group)]
        grid = e.pivot_table(index="layer", columns="group", values="advantage")[cols]
        per_layer_total = e.groupby("layer").total.first()
        share = grid.sum() / per_layer_total.sum() if per_layer_total.sum() else grid.sum() * float("nan")
        lim = float(abs(grid.values).max()) or 1.0
        im = ax.imshow(grid.values, aspect="auto", cmap="vlag", vmin=-lim, vmax=lim, origin="lower")
        fig.colorbar(im, ax=ax, label="logit advantage")
        pairs = e.groupby("group").pairs.mean()[cols] if "pairs" in e else None  # each band's size: its base rate
        ax.set_xticks(range(len(cols)), [f"{c}\n{share[c]:.0%}" + (f"\n[{pairs[c] / pairs.sum():.0%}]"
                                                                   if pairs is not None and pairs.sum() else "")
                                         for c in cols])
        ax.set_yticks(range(len(grid)), [str(x) for x in grid.index])
        ax.tick_params(axis="y", labelsize=6)
        ax.set_xlabel("RoPE band: share of the advantage\n[share of the pairs]")
        if i == 0:
            ax.set_ylabel("layer")
        ax.set_title(EDGE_TITLE[edge])
    fig.suptitle(f"{model} {task}: attention at the answer position by RoPE band".strip(), y=1.02)
    return save(fig, out)
