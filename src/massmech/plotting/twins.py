"""Figures of the twins study: M trajectories, band energy, disruption effects."""

from __future__ import annotations

import os

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from massmech.errors import AnalysisError
from massmech.plotting.style import SITE_LABEL, ci_err, save, use_style


# ------------------------------------------------------------------------ twins
def _late(t, n_layers: int | None = None):
    n = int(t.layer.max()) + 1 if n_layers is None else n_layers
    return t[t.layer >= n // 2]


def twins_trajectory(traj, *, out: str | os.PathLike | None = None) -> plt.Figure:
    """The three twins over training: largest per-head max/mean ratio of M in the later half of
    the layers, massive count (all layers), and slow-half energy share, for Q, K, V."""
    use_style()
    t = traj[traj.variant == traj.mechanism]  # the twins proper
    if t.empty:
        raise AnalysisError("no twin rows (variant == mechanism) in the trajectory table")
    late = _late(t)
    ratio = late.groupby(["mechanism", "site", "step"], as_index=False).max_ratio.max()
    count = t.groupby(["mechanism", "site", "step"], as_index=False).n_massive.sum()
    slow = late.groupby(["mechanism", "site", "step"], as_index=False).slow_half_share.mean()
    rows = [(ratio, "max_ratio", "max/mean of M\n(later layers, max head)"),
            (count, "n_massive", "massive dims\n(λ rule, all layers)"),
            (slow, "slow_half_share", "slow-half energy share\n(later layers)")]
    fig, axes = plt.subplots(3, 3, figsize=(8.4, 6.4), sharex=True, sharey="row")
    order = [m for m in ("rope", "absolute", "nope") if m in set(t.mechanism)]
    for r, (d, col, label) in enumerate(rows):
        for c, site in enumerate(("q", "k", "v")):
            ax = axes[r][c]
            sns.lineplot(data=d[d.site == site], x="step", y=col, hue="mechanism", hue_order=order,
                         marker="o", markersize=3, ax=ax, legend=(r == 0 and c == 2))
            ax.set_xscale("symlog", linthresh=25)
            ax.set_ylabel(label if c == 0 else "")
            if r == 0:
                ax.set_title(SITE_LABEL[site])
            if col == "slow_half_share":
                ax.axhline(0.5, color="grey", ls=":", lw=1)
    axes[0][2].legend(fontsize=7, frameon=False, title=None)
    fig.suptitle("twins differing only in position encoding (pairs indexed as the RoPE twin's)", fontsize=9)
    fig.tight_layout()
    return save(fig, out)


def twins_bands(bands, *, out: str | os.PathLike | None = None) -> plt.Figure:
    """Final energy share per pair in the later layers (mean over heads and layers): the twins by
    pair index (top), the RoPE variants by wavelength relative to their training context (bottom)."""
    use_style()
    b = bands[bands.step == bands.groupby("variant").step.transform("max")]
    b = _late(b).groupby(["variant", "mechanism", "context", "site", "pair"], as_index=False).agg(
        energy_share=("energy_share", "mean"), wavelength=("wavelength", "first"))
    twins = b[b.variant == b.mechanism]
    rope = b[b.mechanism == "rope"].assign(rel=lambda d: d.wavelength / d.context)
    fig, axes = plt.subplots(2, 3, figsize=(8.4, 5.0), sharey="row")
    order = [m for m in ("rope", "absolute", "nope") if m in set(twins.mechanism)]
    for c, site in enumerate(("q", "k", "v")):
        ax = axes[0][c]
        sns.lineplot(data=twins[twins.site == site], x="pair", y="energy_share", hue="mechanism",
                     hue_order=order, ax=ax, lw=1.2, legend=c == 2)
        ax.set_title(SITE_LABEL[site] + (" (grouped as Q/K pairs)" if site == "v" else ""))
        ax.set_xlabel("pair (fast → slow)")
        ax.set_ylabel("share of head energy" if c == 0 else "")
        ax = axes[1][c]
        sns.lineplot(data=rope[rope.site == site], x="rel", y="energy_share", hue="variant", ax=ax,
                     lw=1.2, legend=c == 2)
        ax.set_xscale("log")
        ax.axvline(1.0, color="black", ls="--", lw=1)
        ax.set_xlabel("wavelength / training context")
        ax.set_ylabel("share of head energy" if c == 0 else "")
    for ax in (axes[0][2], axes[1][2]):
        if ax.get_legend() is not None:
            ax.legend(fontsize=7, frameon=False)
    fig.tight_layout()
    return save(fig, out)


def twins_disruption(table: pd.DataFrame, *, out: str | os.PathLike | None = None) -> plt.Figure:
    """RoPE twin: baseline vs top-k Q/K dims replaced by their mean vs k random dims, per metric."""
    use_style()
    metrics = list(dict.fromkeys(table.metric))
    conds = [c for c in ("baseline", "massive", "matched", "random") if c in set(table.condition)]
    colors = dict(zip(conds, sns.color_palette("colorblind"), strict=False))
    fig, axes = plt.subplots(1, len(metrics), figsize=(2.2 * len(metrics), 2.6), squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=True):
        d = table[table.metric == metric].set_index("condition").loc[conds]
        x = np.arange(len(conds))
        err = np.stack(ci_err(d.value, d.ci_low, d.ci_high))
        if metric.endswith("accuracy"):
            ax.bar(x, d.value, yerr=err, color=[colors[c] for c in conds], capsize=2)
            ax.set_ylim(0, 1.05)
        else:  # a loss: points, so the axis need not start at 0
            for xi, c in zip(x, conds, strict=True):
                ax.errorbar(xi, d.value[c], yerr=err[:, [xi]], fmt="o", color=colors[c], capsize=2)
            ax.set_xlim(-0.5, len(conds) - 0.5)
        ax.set_xticks(x, conds, fontsize=7, rotation=20)
        ax.set_title(metric.replace("_", " "), fontsize=8)
    k = int(table.k.iloc[0]) if "k" in table else None
    fig.suptitle(f"{table.variant.iloc[0]}: top-{k} Q/K dims per head replaced by their mean, vs {k} random dims", fontsize=9)
    fig.tight_layout()
    return save(fig, out)
