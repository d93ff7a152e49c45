"""Figures of the quantization study: task accuracy, massive-value preservation, KV-cache quantization."""

from __future__ import annotations

import os

import matplotlib.patches
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from massmech.causal.vocabulary import primary_scorer
from massmech.errors import AnalysisError
from massmech.plotting.style import ci_err, save, select_model, use_style


# ------------------------------------------------------------------ quantization
def _quant_model(table: pd.DataFrame, model: str | None, scorer: str | None = None):
    t, model = select_model(primary_scorer(table, scorer), model)
    if not (t.variant == "none").any():
        raise AnalysisError(f"no reference ('none') rows for {model!r}: is this a quant study table?")
    return t, f"{model} (base: {t.base.iloc[0]})"


def quant_tasks(table: pd.DataFrame, *, model: str | None = None, out: str | os.PathLike | None = None) -> plt.Figure:
    """Accuracy per task and weight quantizer, with 95% CIs: parametric vs contextual tasks.

    Args:
        table: A quant study table (:func:`massmech.studies.quant.study.run_quant_study`).
        model: The model to draw (default: the only one in the table).
    """
    use_style()
    t, title = _quant_model(table, model)
    acc = t[(t.measure == "accuracy") & (t.family != "kv")]
    variants = list(dict.fromkeys(acc.variant))
    tasks = list(dict.fromkeys(acc.sort_values("kind", key=lambda k: k != "parametric", kind="stable").task))
    pal = sns.color_palette("colorblind", 3)
    fig, axes = plt.subplots(1, len(tasks), figsize=(1.2 + 0.28 * len(variants) * len(tasks), 3.1), sharey=True, squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        d = acc[acc.task == task].set_index("variant").reindex(variants)
        colors = [pal[2] if v == "none" else (pal[1] if aware else pal[0]) for v, aware in zip(variants, d.outlier_aware, strict=True)]
        x = np.arange(len(variants))
        ax.bar(x, d.value, 0.75, color=colors)
        ax.errorbar(x, d.value, yerr=ci_err(d.value, d.ci_low, d.ci_high), fmt="none", ecolor="black", elinewidth=0.7, capsize=1.5)
        ax.axhline(float(d.loc["none", "value"]), color=pal[2], lw=0.8, ls="--")
        ax.set_xticks(x)
        ax.set_xticklabels(variants, rotation=60, ha="right", fontsize=6)
        ax.set_title(f"{task}\n({d.kind.iloc[0]}, n={int(d.n.iloc[0])})", fontsize=8)
        ax.set_ylim(0, 1.05)
    axes[0][0].set_ylabel("accuracy")
    handles = [matplotlib.patches.Patch(color=c, label=lab) for c, lab in
               ((pal[2], "reference"), (pal[0], "outlier-blind"), (pal[1], "outlier-aware (AWQ, SmoothQuant)"))]
    axes[0][-1].legend(handles=handles, fontsize=7, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.suptitle(f"{title}: task accuracy per weight quantizer", fontsize=9)
    fig.tight_layout()
    return save(fig, out)


def quant_preservation(table: pd.DataFrame, *, model: str | None = None, out: str | os.PathLike | None = None) -> plt.Figure:
    """Massive-value preservation per quantizer: recall of the clean massive set (Q/K, pre/post
    RoPE), and the relative error of M on massive vs other dims of K post-RoPE."""
    use_style()
    t, title = _quant_model(table, model)
    t = t[t.variant != "none"]
    variants = list(dict.fromkeys(t.variant))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(2.0 + 0.5 * len(variants), 3.2))
    rec = t[t.measure == "recall"].assign(where=lambda d: d.site.str.upper() + " " + d.stage)
    x = np.arange(len(variants))
    wheres = list(dict.fromkeys(rec["where"]))
    for j, (where, color) in enumerate(zip(wheres, sns.color_palette("colorblind", len(wheres)), strict=True)):
        d = rec[rec["where"] == where].set_index("variant").reindex(variants)
        ax1.plot(x + (j - 1.5) * 0.08, d.value, "o", ms=3.5, color=color, label=f"{where}-RoPE")
    ax1.set_ylim(-0.03, 1.03)
    ax1.set_ylabel("recall of the clean massive set")
    ax1.legend(fontsize=6, frameon=False)
    stage = "post" if (t.stage == "post").any() else "pre"  # the cached site
    k = t[(t.site == "k") & (t.stage == stage)]
    pal = sns.color_palette("colorblind", 2)
    for j, (meas, lab) in enumerate((("rel_error_massive", "massive dims"), ("rel_error_other", "other dims"))):
        d = k[k.measure == meas].set_index("variant").reindex(variants)
        ax2.bar(x + (j - 0.5) * 0.38, d.value.clip(lower=1e-6), 0.38, color=pal[j], label=lab)
    ax2.set_yscale("log")
    ax2.set_ylabel(f"relative error of M, K {stage}-RoPE")
    ax2.legend(fontsize=7, frameon=False)
    for ax in (ax1, ax2):
        ax.set_xticks(x)
        ax.set_xticklabels(variants, rotation=60, ha="right", fontsize=6)
    fig.suptitle(f"{title}: what each quantizer does to the massive values", fontsize=9)
    fig.tight_layout()
    return save(fig, out)


def quant_kv(table: pd.DataFrame, *, model: str | None = None, out: str | os.PathLike | None = None) -> plt.Figure:
    """KV-cache quantization: perplexity and contextual accuracy against bits per cached K value,
    per-token vs per-channel vs massive-aware keys."""
    use_style()
    t, title = _quant_model(table, model)
    kv = t[t.family == "kv"]
    if kv.empty:
        raise AnalysisError("the table has no kv-* variants")
    ref = t[t.variant == "none"]
    bits = kv[(kv.measure == "bits_per_value") & kv.task.isna()].set_index("variant").value  # at the window length
    ppl = kv[kv.measure == "perplexity"].set_index("variant").value
    ctx = kv[(kv.measure == "accuracy") & (kv.kind == "contextual")].groupby("variant").value.mean()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(6.4, 2.8))
    methods = list(dict.fromkeys(kv.method))
    for method, color in zip(methods, sns.color_palette("colorblind", len(methods)), strict=True):
        vs = sorted(kv[kv.method == method].variant.unique(), key=lambda v: bits[v])
        ax1.plot([bits[v] for v in vs], [ppl[v] for v in vs], "o-", color=color, label=method.removeprefix("kv-"))
        ax2.plot([bits[v] for v in vs], [ctx.get(v, np.nan) for v in vs], "o-", color=color, label=method.removeprefix("kv-"))
    ax1.axhline(float(ref[ref.measure == "perplexity"].value.iloc[0]), color="gray", ls="--", lw=0.8, label="unquantized")
    ref_ctx = ref[(ref.measure == "accuracy") & (ref.kind == "contextual")].value.mean()
    ax2.axhline(float(ref_ctx), color="gray", ls="--", lw=0.8, label="unquantized")
    ax1.set_yscale("log")
    ax1.set_ylabel("perplexity (held-out text)")
    ax2.set_ylabel("contextual accuracy (mean over tasks)")
    ax2.set_ylim(0, 1.05)
    for ax in (ax1, ax2):
        ax.set_xlabel("bits per cached K value")
    ax1.legend(fontsize=7, frameon=False)
    fig.suptitle(f"{title}: KV-cache quantization of K (post-RoPE) and V", fontsize=9, y=1.03)
    fig.tight_layout()
    return save(fig, out)


# ------------------------------------------------------------------ W_q/W_k only: by draw and by part
QK_ARMS = {"qk-rtn": "all rows rounded", "qk-rtn-keep-massive": "massive rows kept", "qk-rtn-keep-random": "random rows kept"}
QK_PARTS = {("qk", "all"): "Q and K", ("q", "all"): "Q only", ("k", "all"): "K only", ("qk", "local"): "local layers",
            ("qk", "global"): "global layers"}


def _with_part(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.assign(part=[QK_PARTS.get((s, lay), f"{s} {lay}") for s, lay in zip(frame.sites, frame.layers, strict=True)])


def qk_arms(table: pd.DataFrame, *, scorer: str | None = None) -> pd.DataFrame:
    """The W_q/W_k-only variants' accuracy per task, part and method: the mean, min and max over
    the stochastic roundings (draw >= 1), their count, and the round-to-nearest value (draw 0).

    Args:
        table: A quant study table with ``qk-*`` variants (grids ``qk-draws``, ``qk-parts``).
        scorer: Whose verdicts (default: the table's first scorer).

    Returns:
        One row per ``task, kind, part, method``: ``mean, low, high, draws, nearest``
        (``mean``: the nearest value where there is no stochastic draw).

    >>> import pandas as pd
    >>> t = pd.DataFrame({"measure": "accuracy", "task": "passkey", "kind": "contextual", "scorer": "strict",
    ...                   "method": "qk-rtn-keep-massive", "sites": "qk", "layers": "all", "draw": [0, 1, 2],
    ...                   "value": [0.5, 0.6, 0.8]})
    >>> qk_arms(t)[["part", "mean", "low", "high", "draws", "nearest"]].to_dict("records")
    [{'part': 'Q and K', 'mean': 0.7, 'low': 0.6, 'high': 0.8, 'draws': 2, 'nearest': 0.5}]
    """
    acc = primary_scorer(table, scorer)
    acc = acc[(acc.measure == "accuracy") & acc.method.isin(list(QK_ARMS))]
    if acc.empty:
        raise AnalysisError(f"the table has no W_q/W_k-only ({', '.join(QK_ARMS)}) accuracy rows")
    rows = []
    for (task, kind, part, method), d in _with_part(acc).groupby(["task", "kind", "part", "method"], sort=False):
        drawn, nearest = d[d.draw >= 1].value, d[d.draw == 0].value
        rows.append({"task": task, "kind": kind, "part": part, "method": method, "mean": float(drawn.mean()) if len(drawn) else float(nearest.mean()),
                     "low": float(drawn.min()) if len(drawn) else float("nan"),
                     "high": float(drawn.max()) if len(drawn) else float("nan"), "draws": len(drawn),
                     "nearest": float(nearest.iloc[0]) if len(nearest) else float("nan")})
    return pd.DataFrame(rows)


def quant_qk(table: pd.DataFrame, *, model: str | None = None, scorer: str | None = None,
             out: str | os.PathLike | None = None) -> plt.Figure:
    """W_q/W_k only at 4 bits, per task: all rows rounded vs the massive rows kept exact vs as many
    random rows kept, by part (Q and K, Q only, K only, local or global layers); bars are the mean
    over stochastic roundings (dots: each rounding), crosses the round-to-nearest value, the dashed
    line the unquantized model (:func:`qk_arms`).

    Args:
        table: A quant study table with ``qk-*`` variants.
        model: The model to draw (default: the only one in the table).
        scorer: Whose verdicts (default: the table's first scorer); named in the title.
    """
    use_style()
    t, title = _quant_model(table, model, scorer)  # the rows of one scorer
    arms = qk_arms(t)
    ref = t[(t.variant == "none") & (t.measure == "accuracy")].set_index("task").value
    tasks = list(dict.fromkeys(arms.sort_values("kind", key=lambda k: k != "parametric", kind="stable").task))
    parts = [p for p in QK_PARTS.values() if p in set(arms.part)] + sorted(set(arms.part) - set(QK_PARTS.values()))
    pal = dict(zip(QK_ARMS, sns.color_palette("colorblind", len(QK_ARMS)), strict=True))
    acc = _with_part(t[(t.measure == "accuracy") & t.method.isin(list(QK_ARMS)) & (t.draw >= 1)])
    fig, axes = plt.subplots(1, len(tasks), figsize=(1.0 + max(1.5, 0.6 + 0.55 * len(parts)) * len(tasks), 3.0), sharey=True,
                             squeeze=False)
    width = 0.8 / len(QK_ARMS)
    for ax, task in zip(axes[0], tasks, strict=True):
        a = arms[arms.task == task].set_index(["part", "method"])
        for j, method in enumerate(QK_ARMS):
            x = np.arange(len(parts)) + (j - 1) * width
            rows = a.reindex([(p, method) for p in parts])
            ax.bar(x, rows["mean"], width, color=pal[method], label=QK_ARMS[method])
            ax.plot(x, rows["nearest"], "x", color="black", ms=4, mew=0.8)
            for i, part in enumerate(parts):
                pts = acc[(acc.task == task) & (acc.method == method) & (acc.part == part)]
                ax.plot(np.full(len(pts), x[i]), pts.value, ".", color="black", ms=2, alpha=0.6)
        if task in ref.index:
            ax.axhline(float(ref[task]), color="gray", lw=0.8, ls="--")
        ax.set_xticks(np.arange(len(parts)))
        ax.set_xticklabels(parts, rotation=30, ha="right", fontsize=7)
        kind = a.reset_index().kind.iloc[0]
        ax.set_title(f"{task}\n({kind})", fontsize=8)
        ax.set_ylim(0, 1.05)
    axes[0][0].set_ylabel("accuracy")
    handles = [matplotlib.patches.Patch(color=pal[m], label=lab) for m, lab in QK_ARMS.items()]
    handles += [plt.Line2D([], [], marker=".", ls="", color="black", label="one stochastic rounding"),
                plt.Line2D([], [], marker="x", ls="", color="black", label="round to nearest"),
                plt.Line2D([], [], ls="--", color="gray", label="unquantized")]
    axes[0][-1].legend(handles=handles, fontsize=6, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    scored = next(iter(t.scorer.dropna()), "strict") if "scorer" in t else "strict"
    fig.suptitle(f"{title}: W_q/W_k only at 4 bits per row, scored {scored}", fontsize=9)
    fig.tight_layout()
    return save(fig, out)
