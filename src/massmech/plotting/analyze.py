"""Figures of one model analysis: M heatmaps, token x dim bars, Q/K head bars, emergence and spectrum (and their comparisons across runs)."""

from __future__ import annotations

import os
from collections.abc import Sequence

import matplotlib.pyplot as plt
import matplotlib.ticker
import numpy as np
import pandas as pd
import seaborn as sns
import torch
from jaxtyping import Float, Int
from torch import Tensor

from massmech.core.emergence import Emergence
from massmech.core.frequency import FrequencyAnalysis, equal_count_bands
from massmech.core.models import LoadedModel
from massmech.core.qkvstats import QKVStats
from massmech.errors import AnalysisError, IndexRangeError, NotCapturedError
from massmech.plotting.style import MAGNITUDE_CMAP, SITE_LABEL, save, use_style


def _check_layers(stats: QKVStats, layers: Sequence[int]) -> list[int]:
    for layer in layers:
        if layer not in stats.layers:
            raise IndexRangeError(f"layer {layer} was not captured; captured layers: {list(stats.layers)}")
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


def qk_head_panels(
    model: LoadedModel,
    tokens: Int[Tensor, "1 pos"],
    *,
    layer: int = 1,
    kv_head: int = 0,
) -> tuple[dict[str, Float[Tensor, "pos d_head"]], str]:
    """Pre-RoPE K head ``kv_head`` and the first query head reading it, over the tokens; and a title."""
    if not 0 <= kv_head < model.info.n_kv_heads:
        raise IndexRangeError(f"kv_head {kv_head} out of range [0, {model.info.n_kv_heads})")
    acts = model.run_sites(tokens, [("q", "pre"), ("k", "pre")], layers=[layer])
    q_head = kv_head * (model.info.n_heads // model.info.n_kv_heads)
    panels = {
        f"Q head {q_head}": acts[("q", "pre", layer)][0, :, q_head],
        f"K head {kv_head}": acts[("k", "pre", layer)][0, :, kv_head],
    }
    return panels, f"{model.info.name}, layer {layer}, pre-RoPE"


def panels_frame(panels: dict[str, Float[Tensor, "pos d_head"]], title: str = "") -> pd.DataFrame:
    """Panels as a tidy table (``panel, token, dim, value, title``) to keep in a run folder."""
    rows = []
    for label, x in panels.items():
        a = x.detach().float().cpu().numpy()
        pos, dim = np.meshgrid(np.arange(a.shape[0]), np.arange(a.shape[1]), indexing="ij")
        rows.append(pd.DataFrame({"panel": label, "token": pos.ravel(), "dim": dim.ravel(), "value": a.ravel()}))
    return pd.concat(rows, ignore_index=True).assign(title=title)


def bars_from_frame(frame: pd.DataFrame, *, out: str | os.PathLike | None = None) -> plt.Figure:
    """:func:`token_dim_bars` from a :func:`panels_frame` table (e.g. an analyze run's ``bars.parquet``)."""
    panels = {}
    for label, g in frame.groupby("panel", sort=False):
        grid = g.pivot(index="token", columns="dim", values="value").sort_index().sort_index(axis=1)
        panels[str(label)] = torch.tensor(grid.to_numpy())
    return token_dim_bars(panels, title=str(frame.title.iloc[0]) if "title" in frame else "", out=out)


def qk_head_bars(
    model: LoadedModel,
    tokens: Int[Tensor, "1 pos"],
    *,
    layer: int = 1,
    kv_head: int = 0,
    out: str | os.PathLike | None = None,
) -> plt.Figure:
    """:func:`token_dim_bars` of :func:`qk_head_panels`."""
    panels, title = qk_head_panels(model, tokens, layer=layer, kv_head=kv_head)
    return token_dim_bars(panels, title=title, out=out)


def emergence(analysis: FrequencyAnalysis, em: Emergence | None = None, *,
              out: str | os.PathLike | None = None) -> plt.Figure:
    """Where Q/K concentrate in the slow pairs beyond V, per layer, and the massive count per layer.

    Left, with ``em`` (:func:`massmech.core.emergence.emergence`): Q and K concentration minus
    V's at band factor 1, with the bootstrap interval over chunks and the emergence layer (the
    first layer from which the interval stays above 0) marked; without it, the low-band energy
    fraction of every site and stage. Right: massive dims per layer.

    Example:
        >>> import massmech as mm
        >>> from massmech.core.emergence import emergence_from_windows
        >>> model = mm.load_model("tiny-llama")
        >>> windows = [[5 + i + j for i in range(32)] for j in range(4)]
        >>> fa = mm.frequency_analysis(mm.capture_stats(model, windows, progress=False), context_len=32)
        >>> fig = emergence(fa, emergence_from_windows(model, windows, n_chunks=2, n_boot=20))
        >>> fig.axes[0].get_ylabel()
        'concentration minus V (band factor 1)'
    """
    use_style()
    df = analysis.layers.assign(
        series=lambda d: d.site.map(SITE_LABEL) + " " + d.stage + "-RoPE"
    )
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(8.4, 3.0))
    if em is not None:
        colors = dict(zip(("q", "k"), sns.color_palette("colorblind", 2), strict=True))
        rows = em.layers[em.layers.factor == 1.0]
        for site, g in rows.groupby("site", sort=False):
            layer = em.summary[site].get(1.0)
            ax1.plot(g.layer, g.minus_v, marker="o", ms=3, color=colors[site],
                     label=f"{SITE_LABEL[site]} (emergence: {'none' if layer is None else f'layer {layer}'})")
            ax1.fill_between(g.layer, g.minus_v_low, g.minus_v_high, color=colors[site], alpha=0.2, lw=0)
            if layer is not None:
                ax1.axvline(layer, color=colors[site], ls="--", lw=1)
        ax1.axhline(0, color="grey", ls=":", lw=1)
        ax1.set_ylabel("concentration minus V (band factor 1)")
        ax1.legend(fontsize=7, frameon=False)
        title = (f"band: wavelength > context ({analysis.params['context_len']} tokens); 95% bootstrap interval "
                 f"over {em.params.get('n_chunks', '?')} chunks; emergence: first layer from which it stays above 0")
    else:
        sns.lineplot(data=df, x="layer", y="low_band_energy_fraction", hue="series", marker="o", ax=ax1, markersize=3)
        # Uniform energy would put the band's share of pairs in it (per layer: bases can differ).
        chance = df.groupby("layer").low_band_pair_fraction.first()
        ax1.step(chance.index, chance.to_numpy(), where="mid", color="grey", ls=":", lw=1)
        ax1.text(chance.index[-1], chance.iloc[-1] - 0.02, "uniform ", ha="right", va="top", fontsize=7, color="grey")
        ax1.set_ylabel("energy fraction in low band")
        ax1.set_ylim(0, 1.02)
        ax1.legend(fontsize=7, frameon=False, loc="lower right", ncol=2)
        title = (f"low band: wavelength > context ({analysis.params['context_len']} tokens); "
                 "pair energy is rotation-invariant, so pre- and post-RoPE overlap")
    sns.lineplot(data=df, x="layer", y="n_massive", hue="series", marker="o", ax=ax2, markersize=3, legend=False)
    ax2.set_ylabel(f"massive dims (λ = {analysis.params['lam']:g})")
    for ax in (ax1, ax2):
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax2.yaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    return save(fig, out)


def spectrum(
    analysis: FrequencyAnalysis,
    layers: Sequence[int],
    *,
    stage: str = "pre",
    out: str | os.PathLike | None = None,
) -> plt.Figure:
    """Per-pair energy share (mean over heads) against wavelength, log axis, context marked; with an
    analysis made with ``train_context``, the predicted critical pair k* too (the pair whose
    wavelength equals the training context: :mod:`massmech.core.critical`).

    >>> import massmech as mm
    >>> stats = mm.capture_stats(mm.load_model("tiny-llama"), ["some text"], progress=False)
    >>> fig = spectrum(mm.frequency_analysis(stats, context_len=64, train_context=128), [0])
    >>> [t.get_text() for t in fig.axes[0].texts]
    [' context', ' k* (training context 128)']
    """
    use_style()
    pairs = analysis.pairs
    missing = set(layers) - set(pairs.layer)
    if missing:
        raise IndexRangeError(f"layers {sorted(missing)} not in the analysis; it has {sorted(set(pairs.layer))}")
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
    top = axes[0][0].get_ylim()[1]
    axes[0][0].text(analysis.params["context_len"], top * 0.95, " context", fontsize=7)
    train = analysis.params.get("train_context")
    if train:
        for ax in axes[0]:
            ax.axvline(train, color="tab:red", ls=":", lw=1)
        axes[0][0].text(train, top * 0.85, f" k* (training context {train:g})", fontsize=7, color="tab:red")
    fig.tight_layout()
    return save(fig, out)


# ------------------------------------------------------------------------ comparisons
def _check_key(analyses: dict[str, FrequencyAnalysis], site: str, stage: str) -> None:
    if not analyses:
        raise AnalysisError("nothing to compare: pass at least one analysis")
    for label, fa in analyses.items():
        if f"{site}.{stage}" not in fa.summary:
            raise NotCapturedError(f"run {label!r} has no {site}.{stage}; it has {list(fa.summary)}")


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
    (Gemma 3) sit at their median wavelength. A run analysed with ``train_context`` gets a dotted
    line in its colour at its predicted critical pair k* (wavelength = training context).

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
        line, = ax.plot(g.wavelength / fa.params["context_len"], g.share * n_pairs, marker="o", ms=2.5, lw=1.2,
                        label=f"{label} ({n_pairs} pairs)")
        if fa.params.get("train_context"):  # the predicted critical pair k*, in the run's colour
            ax.axvline(fa.params["train_context"] / fa.params["context_len"], color=line.get_color(), ls=":", lw=1)
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
        >>> " ".join(ax.get_title() for ax in fig.axes)
        'Q K V'
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
