"""Figures: seaborn ``context="paper"``, colorblind palette, vector PDF (Type 42 fonts) plus PNG.

Every function takes analysis tables (or captured statistics), draws one figure and, given
``out`` (a path without suffix), writes ``out.pdf`` and ``out.png``; it returns the figure.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.patches  # noqa: E402,F401
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402,F401
import numpy as np  # noqa: E402
import seaborn as sns  # noqa: E402
from jaxtyping import Float, Int  # noqa: E402
from torch import Tensor  # noqa: E402

from massmech.capture import QKVStats  # noqa: E402
from massmech.frequency import FrequencyAnalysis, equal_count_bands  # noqa: E402
from massmech.models import LoadedModel  # noqa: E402

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


def _check_layers(stats: QKVStats, layers: Sequence[int]) -> list[int]:
    for layer in layers:
        if layer not in stats.layers:
            raise IndexError(f"layer {layer} was not captured; captured layers: {list(stats.layers)}")
    return list(layers)


def massive_heatmap(
    stats: QKVStats,
    layers: Sequence[int],
    *,
    stage: str = "pre",
    sites: Sequence[str] = ("q", "k"),
    n_bands: int = 3,
    out: str | os.PathLike | None = None,
) -> plt.Figure:
    """Heatmaps of ``M`` (head x dim) for Q and K at chosen layers, equal-count band edges drawn.

    With the rotate_half layout, dims ``i`` and ``i + rotary_dim/2`` form pair ``i``, so every
    band appears once in each half of the head; the band edges are drawn in both halves.
    """
    use_style()
    layers = _check_layers(stats, layers)
    fig, axes = plt.subplots(
        len(sites), len(layers), figsize=(3.2 * len(layers), 1.9 * len(sites) + 0.4), squeeze=False
    )
    spec = stats.rope
    for r, site in enumerate(sites):
        m = stats.norm(site, stage)
        for c, layer in enumerate(layers):
            ax = axes[r, c]
            data = m[stats.layers.index(layer)].numpy()  # [head, d_head]
            im = ax.imshow(data, aspect="auto", cmap=MAGNITUDE_CMAP, interpolation="nearest")
            fig.colorbar(im, ax=ax, pad=0.02, fraction=0.05)
            ax.set_title(f"{SITE_LABEL[site]} ({stage}-RoPE), layer {layer}")
            ax.set_yticks(range(0, data.shape[0], max(1, data.shape[0] // 8)))
            ax.set_ylabel("head")
            ax.set_xlabel("dim")
            if spec is not None and site != "v":
                bands = equal_count_bands(spec.n_pairs, n_bands)
                edges = [p for p in range(1, spec.n_pairs) if bands[p] != bands[p - 1]]
                for p in edges:  # left edge of the first pair of each new band
                    dims = spec.pair_dims(p) if spec.layout == "half" else spec.pair_dims(p)[:1]
                    for d in dims:
                        ax.axvline(d - 0.5, color="#0173b2", lw=1.0, ls="--")
                if spec.layout == "half":  # second half of the head: the same pairs again
                    ax.axvline(spec.n_pairs - 0.5, color="black", lw=1.4)
    fig.suptitle(
        f"{stats.model}: L2 norm M over {stats.n_tokens} tokens. Blue dashed: {n_bands} equal-count "
        "RoPE bands, fast → slow"
        + (", in each half of the head (black line)" if spec is not None and spec.layout == "half" else ""),
        fontsize=9,
    )
    fig.tight_layout()
    return save(fig, out)


def token_dim_bars(
    acts: dict[str, Float[Tensor, "pos d_head"]],
    *,
    title: str = "",
    out: str | os.PathLike | None = None,
) -> plt.Figure:
    """3D bars of |x| over token x dim for one head, one panel per entry of ``acts`` (e.g. Q, K)."""
    use_style()
    fig = plt.figure(figsize=(4.2 * len(acts), 3.6))
    for i, (label, x) in enumerate(acts.items()):
        ax = fig.add_subplot(1, len(acts), i + 1, projection="3d")
        a = x.detach().abs().float().cpu().numpy()  # [pos, d_head]
        n_pos, n_dim = a.shape
        pos, dim = np.meshgrid(np.arange(n_pos), np.arange(n_dim), indexing="ij")
        colors = plt.get_cmap(MAGNITUDE_CMAP)(a.ravel() / max(a.max(), 1e-12))
        ax.bar3d(dim.ravel(), pos.ravel(), 0, 0.8, 0.8, a.ravel(), color=colors, shade=True, linewidth=0)
        ax.set_xlabel("dim")
        ax.set_ylabel("token")
        ax.set_zlabel("|value|")
        ax.set_title(label)
        ax.view_init(elev=28, azim=-58)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return save(fig, out)


def qk_head_bars(
    model: LoadedModel,
    tokens: Int[Tensor, "1 pos"],
    *,
    layer: int = 1,
    kv_head: int = 0,
    out: str | os.PathLike | None = None,
) -> plt.Figure:
    """:func:`token_dim_bars` of pre-RoPE K head ``kv_head`` and the first query head reading it."""
    if not 0 <= kv_head < model.info.n_kv_heads:
        raise IndexError(f"kv_head {kv_head} out of range [0, {model.info.n_kv_heads})")
    acts = model.run_sites(tokens, [("q", "pre"), ("k", "pre")], layers=[layer])
    q_head = kv_head * (model.info.n_heads // model.info.n_kv_heads)
    panels = {
        f"Q head {q_head}": acts[("q", "pre", layer)][0, :, q_head],
        f"K head {kv_head}": acts[("k", "pre", layer)][0, :, kv_head],
    }
    return token_dim_bars(panels, title=f"{model.info.name}, layer {layer}, pre-RoPE", out=out)


def emergence(analysis: FrequencyAnalysis, *, out: str | os.PathLike | None = None) -> plt.Figure:
    """Low-band energy fraction and massive count per layer, for Q, K, V, pre and post RoPE."""
    use_style()
    df = analysis.layers.assign(
        series=lambda d: d.site.map(SITE_LABEL) + " " + d.stage + "-RoPE"
    )
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(8.4, 3.0))
    sns.lineplot(data=df, x="layer", y="low_band_energy_fraction", hue="series", marker="o", ax=ax1, markersize=3)
    # Uniform energy would put the band's share of pairs in it (per layer: bases can differ).
    chance = df.groupby("layer").low_band_pair_fraction.first()
    ax1.step(chance.index, chance.to_numpy(), where="mid", color="grey", ls=":", lw=1)
    ax1.text(chance.index[-1], chance.iloc[-1] - 0.02, "uniform ", ha="right", va="top", fontsize=7, color="grey")
    ax1.set_ylabel("energy fraction in low band")
    ax1.set_ylim(0, 1.02)
    sns.lineplot(data=df, x="layer", y="n_massive", hue="series", marker="o", ax=ax2, markersize=3, legend=False)
    ax2.set_ylabel(f"massive dims (λ = {analysis.params['lam']:g})")
    for ax in (ax1, ax2):
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax2.yaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax1.legend(fontsize=7, frameon=False, loc="lower right", ncol=2)
    fig.suptitle(
        f"low band: wavelength > context ({analysis.params['context_len']} tokens); "
        "pair energy is rotation-invariant, so pre- and post-RoPE overlap",
        fontsize=9,
    )
    fig.tight_layout()
    return save(fig, out)


def spectrum(
    analysis: FrequencyAnalysis,
    layers: Sequence[int],
    *,
    stage: str = "pre",
    out: str | os.PathLike | None = None,
) -> plt.Figure:
    """Per-pair energy share (mean over heads) against wavelength, log axis, context marked."""
    use_style()
    pairs = analysis.pairs
    missing = set(layers) - set(pairs.layer)
    if missing:
        raise IndexError(f"layers {sorted(missing)} not in the analysis; it has {sorted(set(pairs.layer))}")
    sites = [s for s in ("q", "k", "v") if ((pairs.site == s) & (pairs.stage == stage)).any()]
    fig, axes = plt.subplots(1, len(sites), figsize=(3.0 * len(sites), 2.8), sharey=True, squeeze=False)
    sub = pairs[(pairs.stage == stage) & pairs.layer.isin(layers)]
    mean = sub.groupby(["site", "layer", "pair"], as_index=False).agg(
        share=("share", "mean"), wavelength=("wavelength", "first")
    )
    for ax, site in zip(axes[0], sites, strict=True):
        d = mean[mean.site == site]
        sns.lineplot(
            data=d, x="wavelength", y="share", hue="layer", palette="viridis", ax=ax, lw=1,
            legend=ax is axes[0][-1],
        )
        ax.set_xscale("log")
        ax.axvline(analysis.params["context_len"], color="black", ls="--", lw=1)
        ax.set_title(f"{SITE_LABEL[site]} ({'grouped as Q/K pairs' if site == 'v' else stage + '-RoPE'})")
        ax.set_xlabel("wavelength (tokens, log)")
        ax.set_ylabel("share of head energy")
    axes[0][0].text(analysis.params["context_len"], axes[0][0].get_ylim()[1] * 0.95, " context", fontsize=7)
    fig.tight_layout()
    return save(fig, out)


# ------------------------------------------------------------------------ comparisons
def _check_key(analyses: dict[str, FrequencyAnalysis], site: str, stage: str) -> None:
    if not analyses:
        raise ValueError("nothing to compare: pass at least one analysis")
    for label, fa in analyses.items():
        if f"{site}.{stage}" not in fa.summary:
            raise KeyError(f"run {label!r} has no {site}.{stage}; it has {list(fa.summary)}")


def compare_spectrum(
    analyses: dict[str, FrequencyAnalysis],
    *,
    site: str = "k",
    stage: str = "pre",
    out: str | os.PathLike | None = None,
) -> plt.Figure:
    """Overlaid spectra: pair energy share (mean over layers and heads) against wavelength / context.

    The x axis is each pair's wavelength divided by the run's context length (log), so runs with
    different bases, pair counts or contexts line up (right of 1: the low band). The y axis is the
    share times ``n_pairs`` (1 = uniform), so head sizes compare too. Layers with different bases
    (Gemma 3) sit at their median wavelength.

    Args:
        analyses: Run label -> :class:`~massmech.FrequencyAnalysis`, one line each.
        site: ``"q"``, ``"k"`` or ``"v"`` (V grouped as Q/K pairs).
        stage: ``"pre"`` or ``"post"`` RoPE.
        out: Path without suffix: writes ``out.pdf`` and ``out.png``.

    Example:
        >>> import massmech as mm
        >>> from massmech.plotting import compare_spectrum
        >>> stats = mm.capture_stats(mm.load_model("tiny-llama"), ["some text"], progress=False)
        >>> fig = compare_spectrum({"tiny": mm.frequency_analysis(stats, context_len=64)})
        >>> fig.axes[0].get_xlabel()
        'wavelength / context (log)'
    """
    use_style()
    _check_key(analyses, site, stage)
    fig, ax = plt.subplots(figsize=(4.2, 3.0))
    for label, fa in analyses.items():
        d = fa.pairs[(fa.pairs.site == site) & (fa.pairs.stage == stage)]
        n_pairs = d.pair.nunique()
        g = d.groupby("pair").agg(share=("share", "mean"), wavelength=("wavelength", "median"))
        ax.plot(g.wavelength / fa.params["context_len"], g.share * n_pairs, marker="o", ms=2.5, lw=1.2,
                label=f"{label} ({n_pairs} pairs)")
    ax.set_xscale("log")
    ax.axvline(1.0, color="black", ls="--", lw=1)
    ax.axhline(1.0, color="grey", ls=":", lw=1)
    ax.set_xlabel("wavelength / context (log)")
    ax.set_ylabel("pair energy share × n_pairs\n(1 = uniform)")
    ax.legend(fontsize=7, frameon=False)
    ax.set_title(f"{SITE_LABEL[site]} {stage}-RoPE, mean over layers and heads; right of dashed: low band", fontsize=8)
    fig.tight_layout()
    return save(fig, out)


def compare_emergence(
    analyses: dict[str, FrequencyAnalysis],
    *,
    stage: str = "pre",
    out: str | os.PathLike | None = None,
) -> plt.Figure:
    """Overlaid low-half energy fraction against relative depth, one panel per site (Q, K, V).

    Relative depth is ``layer / last captured layer`` (0 = first, 1 = last), so models of
    different depth line up; the dotted line is the uniform 0.5.

    Args:
        analyses: Run label -> :class:`~massmech.FrequencyAnalysis`, one line each.
        stage: ``"pre"`` or ``"post"`` RoPE for Q and K (V has only ``"pre"``).
        out: Path without suffix: writes ``out.pdf`` and ``out.png``.

    Example:
        >>> import massmech as mm
        >>> from massmech.plotting import compare_emergence
        >>> stats = mm.capture_stats(mm.load_model("tiny-llama"), ["some text"], progress=False)
        >>> fig = compare_emergence({"tiny": mm.frequency_analysis(stats, context_len=64)})
        >>> [ax.get_title() for ax in fig.axes]
        ['Q', 'K', 'V']
    """
    use_style()
    _check_key(analyses, "k", stage)
    fig, axes = plt.subplots(1, 3, figsize=(8.4, 2.8), sharey=True)
    for label, fa in analyses.items():
        for ax, site in zip(axes, ("q", "k", "v"), strict=True):
            d = fa.layers[(fa.layers.site == site) & (fa.layers.stage == ("pre" if site == "v" else stage))]
            depth = d.layer / max(int(fa.layers.layer.max()), 1)
            ax.plot(depth, d.low_half_energy_fraction, marker="o", ms=2.5, lw=1.2, label=label)
    for ax, site in zip(axes, ("q", "k", "v"), strict=True):
        ax.axhline(0.5, color="grey", ls=":", lw=1)
        ax.set_title(SITE_LABEL[site])
        ax.set_xlabel("relative depth (layer / last layer)")
        ax.set_ylim(0, 1.02)
    axes[0].set_ylabel("low-half energy fraction")
    axes[-1].legend(fontsize=7, frameon=False)
    fig.suptitle(f"energy in the slowest half of the RoPE pairs, {stage}-RoPE (V grouped as Q/K pairs)", fontsize=9)
    fig.tight_layout()
    return save(fig, out)


# ------------------------------------------------------------------------ ablations
def _condition_label(table) -> object:
    """``baseline`` / ``massive`` / ``control: <kind>`` per row of a sweep table."""
    return table.role.where(table.control.isna(), "control: " + table.control.fillna(""))


def _grouped_bars(ax, d, by: str, categories: list, whats: list[str], colors: dict) -> None:
    """Bars of accuracy per category (x) and condition (colour), with 95% CI error bars."""
    w = 0.8 / len(whats)
    for j, what in enumerate(whats):
        rows = d[d.what == what].set_index(by).reindex(categories)
        x = np.arange(len(categories)) + (j - (len(whats) - 1) / 2) * w
        ax.bar(x, rows.accuracy, w, color=colors[what], label=what)
        ax.errorbar(x, rows.accuracy, yerr=[rows.accuracy - rows.ci_low, rows.ci_high - rows.accuracy],
                    fmt="none", ecolor="black", elinewidth=0.8, capsize=2)
    ax.set_xticks(np.arange(len(categories)))


def ablation_bars(table, *, model: str | None = None, out: str | os.PathLike | None = None) -> plt.Figure:
    """The main result: accuracy per task for baseline, massive-disrupted and controls, 95% CIs.

    Parametric (memorised facts) and contextual tasks are drawn side by side.

    Args:
        table: A sweep results table (:func:`massmech.sweeps.run_sweep`) with one layer range.
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


def ablation_curve(table, *, model: str | None = None, out: str | os.PathLike | None = None) -> plt.Figure:
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


def ablation_layers(table, *, model: str | None = None, out: str | os.PathLike | None = None) -> plt.Figure:
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


def _task_panels(table, model: str | None):
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
        raise ValueError(
            f"several rows per {keys}: select one value of {varying or grid} first "
            "(e.g. table[table.layer_range == 'all'])"
        )


def _select_model(table, model: str | None):
    """The rows of ``model`` (default: the table's only model)."""
    models = list(dict.fromkeys(table.model))
    if model is None:
        if len(models) != 1:
            raise ValueError(f"the table holds several models {models}: pass model=")
        model = models[0]
    if model not in models:
        raise ValueError(f"model {model!r} not in the table; it holds {models}")
    return table[table.model == model], model


def _one_model(table, model: str | None):
    t, model = _select_model(table, model)
    if t.empty or not (t.role == "baseline").any():
        raise ValueError(f"no baseline rows for {model!r}: is this a sweep results table?")
    return t


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
        raise ValueError("no twin rows (variant == mechanism) in the trajectory table")
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


def twins_disruption(table, *, out: str | os.PathLike | None = None) -> plt.Figure:
    """RoPE twin: baseline vs top-k Q/K dims replaced by their mean vs k random dims, per metric."""
    use_style()
    metrics = list(dict.fromkeys(table.metric))
    conds = [c for c in ("baseline", "massive", "random") if c in set(table.condition)]
    colors = dict(zip(conds, sns.color_palette("colorblind"), strict=False))
    fig, axes = plt.subplots(1, len(metrics), figsize=(2.2 * len(metrics), 2.6), squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=True):
        d = table[table.metric == metric].set_index("condition").loc[conds]
        x = np.arange(len(conds))
        err = np.stack([d.value - d.ci_low, d.ci_high - d.value])
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


# ------------------------------------------------------------------ quantization
def _quant_model(table, model: str | None):
    t, model = _select_model(table, model)
    if not (t.variant == "none").any():
        raise ValueError(f"no reference ('none') rows for {model!r}: is this a quant study table?")
    return t, f"{model} (base: {t.base.iloc[0]})"


def quant_tasks(table, *, model: str | None = None, out: str | os.PathLike | None = None) -> plt.Figure:
    """Accuracy per task and weight quantizer, with 95% CIs: parametric vs contextual tasks.

    Args:
        table: A quant study table (:func:`massmech.quant_study.run_quant_study`).
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
        ax.errorbar(x, d.value, yerr=[d.value - d.ci_low, d.ci_high - d.value], fmt="none", ecolor="black", elinewidth=0.7, capsize=1.5)
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


def quant_preservation(table, *, model: str | None = None, out: str | os.PathLike | None = None) -> plt.Figure:
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


def quant_kv(table, *, model: str | None = None, out: str | os.PathLike | None = None) -> plt.Figure:
    """KV-cache quantization: perplexity and contextual accuracy against bits per cached K value,
    per-token vs per-channel vs massive-aware keys."""
    use_style()
    t, title = _quant_model(table, model)
    kv = t[t.family == "kv"]
    if kv.empty:
        raise ValueError("the table has no kv-* variants")
    ref = t[t.variant == "none"]
    bits = kv[kv.measure == "bits_per_value"].set_index("variant").value
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
