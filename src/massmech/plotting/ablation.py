"""Figures of ablation sweeps: accuracy per condition, curves over lambda/k, disrupted layer ranges."""

from __future__ import annotations

import os

import matplotlib.pyplot as plt
import matplotlib.ticker
import numpy as np
import pandas as pd
import seaborn as sns

from massmech.errors import AnalysisError
from massmech.plotting.style import ci_err, save, select_model, use_style


# ------------------------------------------------------------------------ ablations
def _condition_label(table: pd.DataFrame) -> object:
    """``baseline`` / ``massive`` / ``control: <kind>`` per row of a sweep table."""
    return table.role.where(table.control.isna(), "control: " + table.control.fillna(""))


def _grouped_bars(ax, d, by: str, categories: list, whats: list[str], colors: dict) -> None:
    """Bars of accuracy per category (x) and condition (colour), with 95% CI error bars."""
    w = 0.8 / len(whats)
    for j, what in enumerate(whats):
        rows = d[d.what == what].set_index(by).reindex(categories)
        x = np.arange(len(categories)) + (j - (len(whats) - 1) / 2) * w
        ax.bar(x, rows.accuracy, w, color=colors[what], label=what)
        ax.errorbar(x, rows.accuracy, yerr=ci_err(rows.accuracy, rows.ci_low, rows.ci_high),
                    fmt="none", ecolor="black", elinewidth=0.8, capsize=2)
    ax.set_xticks(np.arange(len(categories)))


def ablation_bars(table: pd.DataFrame, *, model: str | None = None, out: str | os.PathLike | None = None) -> plt.Figure:
    """The main result: accuracy per task for baseline, massive-disrupted and controls, 95% CIs.

    Parametric (memorised facts) and contextual tasks are drawn side by side.

    Args:
        table: A sweep results table (:func:`massmech.studies.ablation.run_sweep`) with one layer range.
        model: The model to draw (default: the only one in the table).
    """
    use_style()
    t = _one_model(table, model)
    t = t.assign(what=_condition_label(t))
    _check_single(t, ["task", "what"])
    order = ["baseline", "massive"] + sorted(w for w in t.what.unique() if w.startswith("control"))
    colors = dict(zip(order, sns.color_palette("colorblind", len(order)), strict=True))
    kinds = [k for k in ("parametric", "contextual") if (t.kind == k).any()]
    widths = [t[t.kind == k].task.nunique() for k in kinds]
    fig, axes = plt.subplots(1, len(kinds), figsize=(1.3 + 1.05 * sum(widths), 3.0), sharey=True,
                             gridspec_kw={"width_ratios": widths}, squeeze=False)
    for ax, kind in zip(axes[0], kinds, strict=True):
        d = t[t.kind == kind]
        tasks = list(dict.fromkeys(d.task))
        _grouped_bars(ax, d, "task", tasks, order, colors)
        ax.set_xticklabels([f"{tk}\n(n={int(d[d.task == tk].n.iloc[0])})" for tk in tasks], rotation=30, ha="right", fontsize=7)
        ax.set_title(f"{kind} tasks")
        ax.set_ylim(0, 1.05)
    axes[0][0].set_ylabel("accuracy")
    axes[0][-1].legend(fontsize=7, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    r = t[t.role == "massive"].iloc[0]
    sel = f"λ = {r.lam:g}" if r.rule == "lambda" else f"top-{r.k}"
    fig.suptitle(f"{t.model.iloc[0]}: massive Q/K values ({sel}, {r.target}, {r.stage}-RoPE) replaced by their mean", fontsize=9)
    fig.tight_layout()
    return save(fig, out)


def ablation_curve(table: pd.DataFrame, *, model: str | None = None, out: str | os.PathLike | None = None) -> plt.Figure:
    """Accuracy against k (top-k rule) or lambda, massive vs control, one panel per task."""
    t, tasks, fig, axes = _task_panels(table, model)
    x = "k" if (t.rule == "topk").any() else "lam"
    _check_single(t, ["task", "what", x])
    palette = dict(zip(["massive", *sorted({w for w in t.what if w.startswith("control")})], sns.color_palette("colorblind")[1:], strict=False))
    for ax, task in zip(axes[0], tasks, strict=True):
        d = t[t.task == task]
        base = d[d.role == "baseline"]
        if len(base):
            ax.axhspan(base.ci_low.iloc[0], base.ci_high.iloc[0], color="grey", alpha=0.2, lw=0)
            ax.axhline(base.accuracy.iloc[0], color="grey", lw=1, label="baseline")
        for what, g in d[d.role != "baseline"].groupby("what"):
            g = g.sort_values(x)
            ax.plot(g[x], g.accuracy, marker="o", ms=3, color=palette[what], label=what)
            ax.fill_between(g[x].astype(float), g.ci_low, g.ci_high, color=palette[what], alpha=0.15, lw=0)
        ax.set_xscale("log", base=2)
        ticks = sorted(d[d.role != "baseline"][x].dropna().astype(float).unique())
        ax.set_xticks(ticks, [f"{v:g}" for v in ticks])
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.set_xlabel("k (dims per head)" if x == "k" else "λ")
        ax.set_title(task, fontsize=8)
        ax.set_ylim(-0.02, 1.02)
    axes[0][0].set_ylabel("accuracy")
    axes[0][-1].legend(fontsize=7, frameon=False)
    fig.tight_layout()
    return save(fig, out)


def ablation_layers(table: pd.DataFrame, *, model: str | None = None, out: str | os.PathLike | None = None) -> plt.Figure:
    """Accuracy when only a range of layers is disrupted (early / middle / late / all)."""
    t, tasks, fig, axes = _task_panels(table, model)
    _check_single(t, ["task", "what", "layer_range"])
    ranges = [r for r in ("early", "middle", "late", "all") if (t.layer_range == r).any()]
    whats = ["massive", *sorted({w for w in t.what if w.startswith("control")})]
    colors = dict(zip(whats, sns.color_palette("colorblind")[1:], strict=False))
    for ax, task in zip(axes[0], tasks, strict=True):
        d = t[t.task == task]
        base = d[d.role == "baseline"]
        if len(base):
            ax.axhline(base.accuracy.iloc[0], color="grey", lw=1, label="baseline")
        _grouped_bars(ax, d, "layer_range", ranges, whats, colors)
        ax.set_xticklabels(ranges, fontsize=7)
        ax.set_title(task, fontsize=8)
        ax.set_ylim(0, 1.05)
    axes[0][0].set_ylabel("accuracy")
    axes[0][-1].legend(fontsize=7, frameon=False)
    fig.suptitle("disrupted layers (thirds of the depth)", fontsize=9)
    fig.tight_layout()
    return save(fig, out)


def dose_response(table: pd.DataFrame, *, model: str | None = None, out: str | os.PathLike | None = None) -> plt.Figure:
    """Accuracy against removed token variance, massive arm vs its variance-matched control.

    One panel per task: each top-k point of the massive arm (top-k dims by M replaced by their
    prompt mean) and of the control that removes the same variance with random other dims, with
    95% Wilson intervals; the baseline as a line. If the massive dims matter beyond their size,
    the massive curve lies below the control's at equal removed variance.

    Args:
        table: A sweep results table with top-k massive rows and ``matched`` controls
            (preset ``dose``).
        model: The model to draw (default: the only one in the table).
    """
    use_style()
    t = _one_model(table, model)
    arms = t[(t.role == "massive") | (t.control == "matched")]
    if arms.empty or arms.k.isna().all():
        raise AnalysisError("dose_response needs top-k massive rows and matched controls (sweep preset 'dose')")
    tasks = list(dict.fromkeys(t.task))
    colors = dict(zip(("massive", "matched control"), sns.color_palette("colorblind", 2), strict=True))
    fig, axes = plt.subplots(1, len(tasks), figsize=(2.6 * len(tasks) + 0.6, 2.6), sharey=True, squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        d = t[t.task == task]
        base = d[d.role == "baseline"]
        if len(base):
            ax.axhline(float(base.accuracy.iloc[0]), color="grey", lw=0.8, ls="--", label="baseline")
        for label, rows in (("massive", d[d.role == "massive"]), ("matched control", d[d.control == "matched"])):
            rows = rows.sort_values("removed_variance")
            ax.errorbar(rows.removed_variance, rows.accuracy,
                        yerr=ci_err(rows.accuracy, rows.ci_low, rows.ci_high),
                        marker="o", ms=3, lw=1, capsize=2, color=colors[label], label=label)
            if label == "massive":
                for r in rows.itertuples():
                    ax.annotate(f"k={int(r.k)}", (r.removed_variance, r.accuracy), fontsize=6,
                                textcoords="offset points", xytext=(2, 3))
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0, decimals=0))
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_title(f"{task} (n={int(d.n.iloc[0])})")
        ax.set_ylim(0, 1.05)
    fig.supxlabel("share of Q/K token variance removed (log scale)", fontsize=8, y=-0.04)
    axes[0][0].set_ylabel("accuracy")
    axes[0][-1].legend(fontsize=7, frameon=False)
    fig.suptitle(f"{t.model.iloc[0]}: dose-response, massive dims vs random dims matched in removed variance",
                 fontsize=8, y=1.04)
    return save(fig, out)


def pairs_effect(table: pd.DataFrame, *, model: str | None = None, out: str | os.PathLike | None = None) -> plt.Figure:
    """Whole RoPE pairs vs single coordinates: accuracy of each massive arm beside its control
    matched in neutral-text KL, per task and k, with 95% Wilson intervals and the baseline as a line.

    Each massive arm's next-token KL on neutral text (coordinate | pair) is written under its k, so
    a reader sees whether a larger drop comes with a larger disturbance.

    Args:
        table: A sweep results table with both granularities and ``kl`` controls (preset ``pairs-effect``).
        model: The model to draw (default: the only one in the table).

    >>> import pandas as pd
    >>> rows = [dict(model="m", task="kv_lookup", role="baseline", control=None, k=None, granularity=None,
    ...              accuracy=0.5, ci_low=0.4, ci_high=0.6, n=100, kl_massive=None, scorer="rank")]
    >>> rows += [dict(model="m", task="kv_lookup", role=r, control=c, k=k, granularity=g, accuracy=a, ci_low=a - 0.1,
    ...               ci_high=a + 0.1, n=100, kl_massive=0.5, scorer="rank")
    ...          for k in (1, 4) for g in ("dim", "pair") for r, c, a in (("massive", None, 0.3), ("control", "kl", 0.4))]
    >>> len(pairs_effect(pd.DataFrame(rows)).axes)
    1
    """
    use_style()
    t = _one_model(table, model)
    arms = t[(t.role == "massive") | (t.control == "kl")]
    if arms.empty or set(arms.granularity.dropna()) != {"dim", "pair"} or not (arms.control == "kl").any():
        raise AnalysisError("pairs_effect needs massive rows by coordinate and by pair with their KL-matched "
                            "controls (sweep preset 'pairs-effect')")
    tasks, ks = list(dict.fromkeys(arms.task)), sorted(int(k) for k in arms.k.dropna().unique())
    bars = [(g, kind) for g in ("dim", "pair") for kind in ("massive", "kl")]
    palette = sns.color_palette("colorblind", 2)
    fig, axes = plt.subplots(1, len(tasks), figsize=(2.9 * len(tasks) + 0.4, 2.8), sharey=True, squeeze=False)
    w = 0.8 / len(bars)
    for ax, task in zip(axes[0], tasks, strict=True):
        d = arms[arms.task == task]
        base = t[(t.task == task) & (t.role == "baseline")]
        if len(base):
            ax.axhline(float(base.accuracy.iloc[0]), color="grey", lw=0.8, ls="--", label="baseline")
        for j, (g, kind) in enumerate(bars):
            rows = d[(d.granularity == g) & ((d.role == "massive") if kind == "massive" else (d.control == "kl"))]
            rows = rows.set_index(rows.k.astype(int)).reindex(ks)
            x = np.arange(len(ks)) + (j - (len(bars) - 1) / 2) * w
            label = ("coordinate" if g == "dim" else "whole pair") + (" (massive)" if kind == "massive" else ", KL-matched control")
            ax.bar(x, rows.accuracy, w, color=palette[g == "pair"], alpha=1.0 if kind == "massive" else 0.45,
                   hatch=None if kind == "massive" else "///", edgecolor="white", lw=0.3, label=label)
            ax.errorbar(x, rows.accuracy, yerr=ci_err(rows.accuracy, rows.ci_low, rows.ci_high), fmt="none",
                        ecolor="black", elinewidth=0.8, capsize=2)
        kl = {g: d[(d.granularity == g) & (d.role == "massive")].set_index("k").kl_massive for g in ("dim", "pair")}
        ax.set_xticks(np.arange(len(ks)))
        ax.set_xticklabels([f"top-{k}\nKL {kl['dim'].get(k, np.nan):.2g} | {kl['pair'].get(k, np.nan):.2g}" for k in ks],
                           fontsize=7)
        ax.set_title(f"{task} (n={int(d.n.iloc[0])})")
        ax.set_ylim(0, 1.05)
    axes[0][0].set_ylabel(f"accuracy ({t.scorer.dropna().iloc[0]})" if "scorer" in t and t.scorer.notna().any() else "accuracy")
    axes[0][-1].legend(fontsize=6, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.suptitle(f"{t.model.iloc[0]}: massive values replaced by whole RoPE pair vs by coordinate, each beside a "
                 "control matched in neutral-text KL", fontsize=8, y=1.04)
    return save(fig, out)


def _task_panels(table: pd.DataFrame, model: str | None):
    """One model's rows (with a ``what`` label), its tasks, and one panel per task."""
    use_style()
    t = _one_model(table, model)
    t = t.assign(what=_condition_label(t))
    tasks = list(dict.fromkeys(t.task))
    fig, axes = plt.subplots(1, len(tasks), figsize=(2.3 * len(tasks), 2.6), sharey=True, squeeze=False)
    return t, tasks, fig, axes


def _check_single(t, keys: list[str]) -> None:
    """One row per ``keys``: else name the grid columns the caller must fix to one value."""
    if t.duplicated(keys).any():
        grid = ["rule", "lam", "k", "target", "stage", "layer_range"]
        varying = [c for c in grid if c not in keys and t[t.role != "baseline"][c].nunique() > 1]
        raise AnalysisError(
            f"several rows per {keys}: select one value of {varying or grid} first "
            "(e.g. table[table.layer_range == 'all'])"
        )


def _one_model(table: pd.DataFrame, model: str | None):
    t, model = select_model(table, model)
    if t.empty or not (t.role == "baseline").any():
        raise AnalysisError(f"no baseline rows for {model!r}: is this a sweep results table?")
    return t
