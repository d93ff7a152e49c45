"""Frequency analysis: where in the RoPE spectrum Q/K energy sits, layer by layer.

Energy here is the sum of squares over tokens (``M**2``). A *pair* is the two dims RoPE rotates
together; its energy is invariant under the rotation, so pre- and post-RoPE agree per pair (not
per dim). V is never rotated: it is grouped into the same dim pairs as Q/K and serves as the
built-in control (no RoPE, so no reason to concentrate in any band).

Two band schemes:

* **context bands** (relative to the analysed context length ``C``): ``low`` = pairs whose
  wavelength exceeds ``C`` (they never complete a turn inside the window, so they cannot tell
  positions apart by phase and can carry content), ``high`` = pairs that turn at least
  ``fast_turns`` times inside the window (wavelength <= ``C / fast_turns``), ``mid`` = between.
* **equal-count bands**: the pairs split into ``n_bands`` groups of (nearly) equal size by
  frequency (``high`` ... ``low``), comparable across models of different bases.

Concentration metrics per (site, stage, layer): ``low_band_energy_fraction`` (context band),
``low_half_energy_fraction`` (slowest half of the pairs: ``pair >= n_pairs // 2``),
``effective_pairs`` (participation ratio of the pair energies, averaged over heads; ``n_pairs``
= uniform, 1 = one pair), and the share of massive dims in the low band (dims outside the
rotary part, with partial rotary, are in no band). The *threshold layer* is the first layer whose
low-half energy fraction reaches ``threshold_share``: a fragile single-threshold marker, named so;
the *emergence layer* massmech reports is :func:`massmech.core.emergence.emergence` (Q/K above V,
with a bootstrap interval and its sensitivity to the band edge).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from massmech._notebook import html_table
from massmech.core.detect import detect_massive
from massmech.core.qkvstats import QKVStats, grid_frame
from massmech.core.rope import RopeSpec
from massmech.errors import AnalysisError, RopeError, RunNotFoundError
from massmech.files.io import write_json
from massmech.files.runs import atomic_run_dir

_BAND_NAMES = {
    2: ("high", "low"),
    3: ("high", "mid", "low"),
    4: ("high", "mid-high", "mid-low", "low"),
}


def context_bands(spec: RopeSpec, layer: int, context_len: int, fast_turns: float = 8.0) -> np.ndarray:
    """Band of each pair relative to a context length: ``"high"``, ``"mid"`` or ``"low"``.

    Args:
        spec: RoPE spec.
        layer: Layer (bases can differ per layer).
        context_len: Tokens in the analysed context.
        fast_turns: Pairs completing at least this many turns in the context are ``high``.

    >>> spec = RopeSpec.from_base(10_000, 8)  # wavelengths 6.3, 63, 628, 6283 tokens
    >>> context_bands(spec, 0, context_len=64).tolist()
    ['high', 'mid', 'low', 'low']
    """
    if context_len < 2:
        raise AnalysisError(f"context_len must be >= 2, got {context_len}")
    if fast_turns <= 1:
        raise AnalysisError(f"fast_turns must be > 1, got {fast_turns}")
    wl = spec.wavelengths(layer)
    return np.where(wl > context_len, "low", np.where(wl <= context_len / fast_turns, "high", "mid"))


def equal_count_bands(n_pairs: int, n_bands: int = 3) -> np.ndarray:
    """Band of each pair when the pairs are split into ``n_bands`` equal-count groups (pair 0 fastest).

    >>> equal_count_bands(6).tolist(), equal_count_bands(4, 2).tolist()
    (['high', 'high', 'mid', 'mid', 'low', 'low'], ['high', 'high', 'low', 'low'])
    """
    if not 2 <= n_bands <= n_pairs:
        raise AnalysisError(f"n_bands must be in [2, n_pairs={n_pairs}], got {n_bands}")
    names = _BAND_NAMES.get(n_bands, tuple(f"band{i}" for i in range(n_bands)))
    idx = (np.arange(n_pairs) * n_bands) // n_pairs
    return np.asarray(names, dtype=object)[idx]


def check_params(
    n_pairs: int, *, n_bands: int = 3, fast_turns: float = 8.0, threshold_share: float = 0.75
) -> None:
    """Validate frequency-analysis parameters (cheap; call before any expensive work).

    >>> check_params(4, n_bands=5)
    Traceback (most recent call last):
    ...
    massmech.errors.AnalysisError: n_bands must be in [2, n_pairs=4], got 5
    """
    if not 2 <= n_bands <= n_pairs:
        raise AnalysisError(f"n_bands must be in [2, n_pairs={n_pairs}], got {n_bands}")
    if fast_turns <= 1:
        raise AnalysisError(f"fast_turns must be > 1, got {fast_turns}")
    if not 0 < threshold_share <= 1:
        raise AnalysisError(f"threshold_share must be in (0, 1], got {threshold_share}")


def pair_energy(stats: QKVStats) -> pd.DataFrame:
    """Energy per RoPE pair: one row per (site, stage, layer, head, pair).

    Columns: ``site, stage, layer, head, pair, energy, share`` (the pair's share of the head's
    rotary energy, i.e. of its rotated dims), ``frequency``, ``wavelength``. V is grouped into
    the same dim pairs (control).

    Raises:
        RopeError: The statistics come from a model without RoPE.

    >>> import torch
    >>> from massmech.core.activations import from_activations
    >>> q = torch.zeros(1, 4, 1, 4)  # 4 tokens, 1 head, d_head 4: pairs (0, 2) and (1, 3)
    >>> q[..., 1] = q[..., 3] = 1.0
    >>> pair_energy(from_activations({"q": q}, rope=RopeSpec.from_base(100, 4)))[["pair", "energy", "share", "wavelength"]]
       pair  energy  share  wavelength
    0     0     0.0    0.0    6.283185
    1     1     8.0    1.0   62.831853
    """
    spec = _spec(stats)
    idx = spec.pair_index()  # [n_pairs, 2]
    frames = []
    for site, stage in stats.keys():
        e = stats.sumsq[(site, stage)][..., idx].sum(-1)  # [layer, head, n_pairs]
        share = e / e.sum(-1, keepdim=True).clamp_min(1e-300)
        freq = np.stack([spec.frequencies(layer) for layer in stats.layers])[:, None, :]
        freq = freq.repeat(e.shape[1], 1)  # [layer, head, n_pairs]
        frames.append(
            grid_frame(
                site, stage, stats.layers, "pair",
                {"energy": e, "share": share, "frequency": freq, "wavelength": 2 * np.pi / freq},
            )
        )
    return pd.concat(frames, ignore_index=True)


def dim_energy(stats: QKVStats) -> pd.DataFrame:
    """Energy per dim: one row per (site, stage, layer, head, dim), with the dim's pair.

    >>> import torch
    >>> from massmech.core.activations import from_activations
    >>> q = torch.zeros(1, 4, 1, 4)
    >>> q[..., 1] = q[..., 3] = 1.0
    >>> dim_energy(from_activations({"q": q}, rope=RopeSpec.from_base(100, 4)))[["dim", "energy", "pair"]]
       dim  energy  pair
    0    0     0.0     0
    1    1     4.0     1
    2    2     0.0     0
    3    3     4.0     1
    """
    spec = _spec(stats)
    frame = stats.to_frame()[["site", "stage", "layer", "head", "dim", "M"]]
    frame = frame.assign(energy=frame.M**2, pair=spec.dim_to_pair()[frame.dim.to_numpy()])
    return frame.drop(columns="M")


def _spec(stats: QKVStats) -> RopeSpec:
    if stats.rope is None:
        raise RopeError(
            f"{stats.model} has no RoPE: frequency bands are undefined. Per-dim statistics and "
            "detect_massive still work."
        )
    if not stats.keys():
        raise AnalysisError("empty statistics: nothing was captured")
    return stats.rope


FORMAT_VERSION = 1
_TABLES = ("pairs", "layers", "massive")


@dataclass(frozen=True, repr=False)
class FrequencyAnalysis:
    """Output of :func:`frequency_analysis`.

    Attributes:
        pairs: Per (site, stage, layer, head, pair): energy, share, frequency, wavelength,
            ``context_band``, ``count_band``.
        layers: Per (site, stage, layer): the concentration metrics (see module doc).
        massive: The massive dims (:func:`~massmech.detect_massive` at ``lam``).
        summary: Per ``"site.stage"``: headline numbers (JSON-ready).
        params: The parameters used (context_len, fast_turns, n_bands, lam, threshold_share,
            and train_context when given).
        predicted: With ``train_context``: the critical-pair prediction vs measurement per
            (site, stage, layer) (:func:`massmech.core.critical.predicted_table`), else ``None``.

    >>> import torch
    >>> from massmech.core.activations import from_activations
    >>> x = torch.randn(1, 64, 2, 16, generator=torch.Generator().manual_seed(0))
    >>> fa = frequency_analysis(from_activations({"q": x, "k": x}, stage="post", rope=RopeSpec.from_base(10_000, 16)))
    >>> fa
    FrequencyAnalysis(sites=q.post,k.post, layers=1, pairs=8, context_len=64, lam=5, massive=0)
    >>> sorted(fa.pairs.context_band.unique()), list(fa.summary["k.post"])
    (['high', 'low', 'mid'], ['massive_count', 'low_band_energy_fraction', 'low_half_energy_fraction', 'massive_low_band_share', 'effective_pairs', 'threshold_layer'])
    """

    pairs: pd.DataFrame
    layers: pd.DataFrame
    massive: pd.DataFrame
    summary: dict
    params: dict = field(default_factory=dict)
    predicted: pd.DataFrame | None = None

    def _fields(self) -> dict[str, object]:
        keys = list(self.summary)
        p = self.params
        return {
            "sites": ",".join(keys[:6]) + (",..." if len(keys) > 6 else ""),
            "layers": self.layers.layer.nunique() if "layer" in self.layers else 0,
            "pairs": self.pairs.pair.nunique() if "pair" in self.pairs else 0,
            "context_len": p.get("context_len"),
            "lam": f"{p['lam']:g}" if "lam" in p else None,
            "massive": len(self.massive),
        }

    def __repr__(self) -> str:
        return "FrequencyAnalysis(" + ", ".join(f"{k}={v}" for k, v in self._fields().items()) + ")"

    def _repr_html_(self) -> str:
        table = pd.DataFrame(self.summary).T.to_html(float_format=lambda x: f"{x:.3g}", na_rep="-")
        return html_table("FrequencyAnalysis", self._fields(), extra=table)

    def save(self, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Write to a folder: ``pairs``, ``layers``, ``massive`` (parquet) and ``frequency.json``.

        The folder is built in a temporary sibling and moved into place whole.

        Args:
            path: The folder; new, empty, or (with ``overwrite``) a previous save.
            overwrite: Replace a previous save (a folder with ``frequency.json`` holding nothing
                else massmech did not write).

        Returns:
            ``path``.

        Raises:
            RunDirError: ``path`` is a file, a non-empty folder that is not a previous save,
                or a previous save while ``overwrite`` is off.

        Example:
            >>> import tempfile, massmech as mm
            >>> model = mm.load_model("tiny-llama")
            >>> fa = mm.frequency_analysis(mm.capture_stats(model, ["some text"], progress=False), context_len=64)
            >>> folder = fa.save(tempfile.mkdtemp() + "/fa")
            >>> sorted(p.name for p in folder.iterdir())
            ['frequency.json', 'layers.parquet', 'manifest.json', 'massive.parquet', 'pairs.parquet']
            >>> mm.FrequencyAnalysis.load(folder).summary == fa.summary
            True
        """
        with atomic_run_dir(path, "frequency-analysis", overwrite=overwrite) as tmp:
            for t in _TABLES + ("predicted",) * (self.predicted is not None):
                getattr(self, t).to_parquet(tmp / f"{t}.parquet", index=False)
            meta = {"format": "massmech.FrequencyAnalysis", "version": FORMAT_VERSION,
                    "summary": self.summary, "params": self.params}
            write_json(tmp / "frequency.json", meta)
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> FrequencyAnalysis:
        """Read a folder written by :meth:`save`.

        Raises:
            FileNotFoundError: ``path`` holds no ``frequency.json`` (for an ``analyze`` run
                folder use :meth:`from_run`).
            ValueError: A save of a newer, unknown format version.

        Example:
            >>> import tempfile, massmech as mm
            >>> stats = mm.capture_stats(mm.load_model("tiny-llama"), ["some text"], progress=False)
            >>> folder = mm.frequency_analysis(stats, context_len=64).save(tempfile.mkdtemp() + "/fa")
            >>> mm.FrequencyAnalysis.load(folder).params["context_len"]
            64
        """
        path = Path(path)
        if not (path / "frequency.json").is_file():
            hint = " (an analyze run folder: use FrequencyAnalysis.from_run)" if (path / "summary.json").is_file() else ""
            raise RunNotFoundError(f"{path} holds no frequency.json: not a FrequencyAnalysis save{hint}")
        meta = json.loads((path / "frequency.json").read_text())
        if meta.get("version", 0) > FORMAT_VERSION:
            raise AnalysisError(f"{path} has format version {meta['version']}; this massmech reads <= {FORMAT_VERSION}")
        return cls(**_read_tables(path), summary=meta["summary"], params=meta["params"])

    @classmethod
    def from_run(cls, run_dir: str | os.PathLike) -> FrequencyAnalysis:
        """Rebuild the analysis of an ``analyze`` run folder (``massmech analyze --out``).

        Raises:
            FileNotFoundError: A table or ``summary.json`` is missing.

        Example:
            >>> import tempfile, massmech as mm
            >>> from massmech.studies.analyze import AnalyzeConfig, run_analyze
            >>> run = tempfile.mkdtemp() + "/run"
            >>> cfg = AnalyzeConfig(model="tiny-llama", n_tokens=128, seq_len=64, batch_size=2, bars_layer=0)
            >>> _ = run_analyze(cfg, run, progress=False)
            >>> mm.FrequencyAnalysis.from_run(run).params["context_len"]
            64
        """
        run_dir = Path(run_dir)
        if not (run_dir / "summary.json").is_file():
            raise RunNotFoundError(f"{run_dir} holds no summary.json: not an analyze run folder")
        summary = json.loads((run_dir / "summary.json").read_text())
        if "by_stage" not in summary:
            raise AnalysisError(f"{run_dir}/summary.json has no 'by_stage': not an analyze run")
        params = summary.get("params") or {"context_len": summary.get("context_len")}
        return cls(**_read_tables(run_dir), summary=summary["by_stage"], params=params)


def _read_tables(folder: Path) -> dict[str, pd.DataFrame]:
    missing = [f"{t}.parquet" for t in _TABLES if not (folder / f"{t}.parquet").is_file()]
    if missing:
        raise RunNotFoundError(f"{folder} lacks {', '.join(missing)}")
    tables = {t: pd.read_parquet(folder / f"{t}.parquet") for t in _TABLES}
    if (folder / "predicted.parquet").is_file():  # an analysis made with train_context
        tables["predicted"] = pd.read_parquet(folder / "predicted.parquet")
    return tables


def _per_layer(pairs: pd.DataFrame, hits_all: pd.DataFrame, ctx_table: np.ndarray, row_of: dict[int, int],
               half: int) -> pd.DataFrame:
    """One row per (site, stage, layer): band energy fractions, effective pairs, massive dims' bands."""
    rows = []
    for (site, stage, layer), grp in pairs.groupby(["site", "stage", "layer"], sort=False):
        total = grp.energy.sum()
        low = grp.context_band == "low"
        per_head = grp.pivot(index="head", columns="pair", values="energy").to_numpy()
        with np.errstate(invalid="ignore", divide="ignore"):  # a head with no energy: NaN
            pr = np.nanmean(per_head.sum(1) ** 2 / (per_head**2).sum(1)) if per_head.any() else np.nan
        hits = hits_all[(hits_all.site == site) & (hits_all.stage == stage) & (hits_all.layer == layer)]
        rows.append(
            {
                "site": site,
                "stage": stage,
                "layer": layer,
                "low_band_energy_fraction": grp.energy[low].sum() / total if total > 0 else np.nan,
                "low_band_pair_fraction": float(np.mean(ctx_table[row_of[layer], :-1] == "low")),
                "low_half_energy_fraction": grp.energy[grp.pair >= half].sum() / total if total > 0 else np.nan,
                "effective_pairs": pr,
                "n_massive": len(hits),
                "massive_low_band_share": (hits.context_band == "low").mean() if len(hits) else np.nan,
                "massive_low_half_share": (hits.pair >= half).mean() if len(hits) else np.nan,
            }
        )
    return pd.DataFrame(rows)


def _per_site(layers: pd.DataFrame, pairs: pd.DataFrame, hits_all: pd.DataFrame, half: int,
              threshold_share: float) -> dict[str, dict]:
    """The summary per ``"site.stage"``: pooled over layers, and the first layer past the threshold."""
    summary = {}
    for (site, stage), grp in layers.groupby(["site", "stage"], sort=False):
        sub = pairs[(pairs.site == site) & (pairs.stage == stage)]
        hits = hits_all[(hits_all.site == site) & (hits_all.stage == stage)]
        crossed = grp.layer[grp.low_half_energy_fraction >= threshold_share]
        summary[f"{site}.{stage}"] = {
            "massive_count": len(hits),
            "low_band_energy_fraction": float(sub.energy[sub.context_band == "low"].sum() / sub.energy.sum()),
            "low_half_energy_fraction": float(sub.energy[sub.pair >= half].sum() / sub.energy.sum()),
            "massive_low_band_share": float((hits.context_band == "low").mean()) if len(hits) else None,
            "effective_pairs": float(grp.effective_pairs.mean()),
            "threshold_layer": int(crossed.min()) if len(crossed) else None,
        }
    return summary


def frequency_analysis(
    stats: QKVStats, *, context_len: int | None = None, fast_turns: float = 8.0, n_bands: int = 3,
    lam: float = 5.0, threshold_share: float = 0.75, train_context: float | None = None,
) -> FrequencyAnalysis:
    """Where Q/K energy sits in the RoPE spectrum, per layer, with V as the control.

    Args:
        stats: Statistics from :func:`massmech.capture_stats` on a RoPE model.
        context_len: Context length the bands refer to; default the longest captured sequence.
        fast_turns: Turns inside the context that make a pair ``high`` (context bands).
        n_bands: Number of equal-count bands.
        lam: Lambda of the massive-value rule used for the massive-dim shares.
        threshold_share: Low-half energy fraction whose first crossing is the summary's
            ``threshold_layer`` (0.75 = 1.5x the uniform 0.5). Not the emergence layer: see
            :func:`massmech.core.emergence.emergence`.
        train_context: The model's training context in tokens: adds the critical-pair
            prediction (:mod:`massmech.core.critical`) as ``predicted`` and ``critical_*``
            summary keys. ``None`` (default) leaves the output exactly as without it.

    Returns:
        :class:`FrequencyAnalysis`.

    Raises:
        RopeError: No RoPE (GPT-2 etc.): bands are undefined.
        ValueError: Empty statistics or bad parameters.

    >>> import torch
    >>> from massmech.core.activations import from_activations
    >>> x = torch.randn(2, 32, 2, 8, generator=torch.Generator().manual_seed(0))
    >>> q = x * torch.tensor([1, 1, 1, 6.0] * 2)  # Q's slowest pair (dims 3, 7) 6x larger
    >>> fa = frequency_analysis(from_activations({"q": q, "k": x, "v": x}, rope=RopeSpec.from_base(10_000, 8)),
    ...                         context_len=32, lam=2)
    >>> fa.layers[["site", "low_band_energy_fraction", "effective_pairs", "n_massive"]].round(2)
      site  low_band_energy_fraction  effective_pairs  n_massive
    0    q                      0.98             1.18          4
    1    k                      0.80             3.89          0
    2    v                      0.80             3.89          0
    >>> fa.massive.pair.unique().tolist(), fa.summary["q.pre"]["threshold_layer"]
    ([3], 0)
    """
    spec = _spec(stats)
    if context_len is None:
        context_len = int(stats.meta.get("max_len") or 0)
        if context_len < 2:
            raise AnalysisError("the statistics do not record a sequence length: pass context_len")
    check_params(spec.n_pairs, n_bands=n_bands, fast_turns=fast_turns, threshold_share=threshold_share)
    pairs = pair_energy(stats)
    row_of = {layer: i for i, layer in enumerate(stats.layers)}
    # Context band per (layer, pair); a last column "none" for dims outside the rotary part.
    ctx_table = np.stack(
        [np.append(context_bands(spec, layer, context_len, fast_turns), "none") for layer in stats.layers]
    ).astype(object)
    pairs["context_band"] = ctx_table[pairs.layer.map(row_of).to_numpy(), pairs.pair.to_numpy()]
    pairs["count_band"] = equal_count_bands(spec.n_pairs, n_bands)[pairs.pair.to_numpy()]
    half = spec.n_pairs // 2

    massive = detect_massive(stats, lam=lam)
    pair = spec.dim_to_pair()[massive.dim.to_numpy()]  # V grouped like Q/K; -1 outside rotary dims
    hit_band = ctx_table[massive.layer.map(row_of).to_numpy(), np.where(pair >= 0, pair, spec.n_pairs)]
    hits_all = massive.assign(pair=pair, context_band=hit_band)
    layers = _per_layer(pairs, hits_all, ctx_table, row_of, half)
    summary = _per_site(layers, pairs, hits_all, half, threshold_share)
    params = {
        "context_len": context_len,
        "fast_turns": fast_turns,
        "n_bands": n_bands,
        "lam": lam,
        "threshold_share": threshold_share,
    }
    if train_context is None:
        return FrequencyAnalysis(pairs=pairs, layers=layers, massive=massive, summary=summary, params=params)
    from massmech.core.critical import predicted_table

    predicted, extra = predicted_table(pairs, hits_all, spec, train_context)
    summary = {key: {**value, **extra[key]} for key, value in summary.items()}
    return FrequencyAnalysis(pairs=pairs, layers=layers, massive=massive, summary=summary,
                             params={**params, "train_context": train_context}, predicted=predicted)
