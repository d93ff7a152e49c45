"""Side-by-side comparison of frequency analyses: one table, two overlaid figures.

Runs may differ in depth, head size, RoPE base and context length; the table records each
run's ``n_layers``, ``n_pairs`` and ``context_len`` next to its headline numbers, and the figures
use relative axes (wavelength / context, layer / last layer) so the runs line up.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from massmech import plotting
from massmech.core.frequency import FrequencyAnalysis
from massmech.errors import ConfigError, InputTypeError
from massmech.files.io import write_json
from massmech.files.provenance import manifest
from massmech.files.runs import atomic_run_dir, read_manifest

SUMMARY_COLUMNS = (
    "massive_count", "low_band_energy_fraction", "low_half_energy_fraction",
    "massive_low_band_share", "effective_pairs", "threshold_layer",
)
FIGURES = ("compare_spectrum", "compare_emergence")

Run = str | os.PathLike | FrequencyAnalysis | tuple[str, FrequencyAnalysis]


@dataclass(frozen=True, repr=False)
class Comparison:
    """Output of :func:`compare`.

    Attributes:
        table: One row per run x ``"site.stage"``: ``run, site, stage, n_layers, n_pairs,
            context_len`` and the summary columns of :attr:`FrequencyAnalysis.summary`.
        analyses: Run label -> analysis, in the order given.
        figures: ``"compare_spectrum"`` and ``"compare_emergence"`` -> figure.
        out: The folder written, if any.
    """

    table: pd.DataFrame
    analyses: dict[str, FrequencyAnalysis]
    figures: dict[str, Figure]
    out: Path | None = None

    def __repr__(self) -> str:
        runs = ", ".join(list(self.analyses)[:4]) + (", ..." if len(self.analyses) > 4 else "")
        where = f", out={str(self.out)!r}" if self.out else ""
        return f"Comparison(runs=[{runs}], rows={len(self.table)}, figures={len(self.figures)}{where})"

    def _repr_html_(self) -> str:
        return self.table.to_html(index=False, float_format=lambda x: f"{x:.3g}", na_rep="-")


def _resolve(runs: Sequence[Run], labels: Sequence[str] | None) -> dict[str, FrequencyAnalysis]:
    if not runs:
        raise ConfigError("nothing to compare: pass at least one run folder or FrequencyAnalysis")
    names, analyses = [], []
    for i, run in enumerate(runs):
        if isinstance(run, tuple):
            if len(run) != 2 or not isinstance(run[1], FrequencyAnalysis):
                raise InputTypeError(f"run {i}: a tuple must be (label, FrequencyAnalysis)")
            name, fa = str(run[0]), run[1]
        elif isinstance(run, FrequencyAnalysis):
            name, fa = f"run{i}", run
        else:
            folder = Path(run)
            saved = (folder / "frequency.json").is_file()
            name = folder.resolve().name
            fa = FrequencyAnalysis.load(folder) if saved else FrequencyAnalysis.from_run(folder)
        names.append(name)
        analyses.append(fa)
    if labels is not None:
        if len(labels) != len(runs):
            raise ConfigError(f"{len(labels)} labels for {len(runs)} runs")
        names = [str(x) for x in labels]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"duplicate run labels {dupes}: pass labels=[...] with distinct names")
    return dict(zip(names, analyses, strict=True))


def _model_of(run: Run, label: str) -> str:
    """The model a run measured: its manifest's, for a run folder; else the run's label."""
    if isinstance(run, (str, os.PathLike)):
        m = read_manifest(run) or {}
        info, cfg = m.get("model") if isinstance(m.get("model"), dict) else {}, m.get("config") or {}
        return info.get("name") or cfg.get("model") or label
    return label


def _table(analyses: dict[str, FrequencyAnalysis]) -> pd.DataFrame:
    rows = []
    for label, fa in analyses.items():
        shape = {
            "n_layers": fa.layers.layer.nunique(),
            "n_pairs": fa.pairs.pair.nunique(),
            "context_len": fa.params.get("context_len"),
        }
        for key, summary in fa.summary.items():
            site, stage = key.split(".")
            rows.append({"run": label, "site": site, "stage": stage, **shape}
                        | {c: summary.get(c) for c in SUMMARY_COLUMNS})
    table = pd.DataFrame(rows)
    for col in ("massive_low_band_share", "threshold_layer"):  # None -> NaN, one dtype per column
        table[col] = table[col].astype("float64")
    return table


def compare(
    *runs: Run,
    labels: Sequence[str] | None = None,
    out: str | os.PathLike | None = None,
    overwrite: bool = False,
) -> Comparison:
    """Compare frequency analyses of several runs: one table and two overlaid figures.

    Args:
        *runs: Each an ``analyze`` run folder (or a :meth:`FrequencyAnalysis.save` folder), a
            :class:`~massmech.FrequencyAnalysis`, or a ``(label, FrequencyAnalysis)`` pair.
        labels: One label per run; default the folder name, the pair's label, or ``"run<i>"``.
        out: If given, a folder written whole: ``compare.csv``, ``compare.parquet`` and
            ``figures/compare_spectrum`` and ``figures/compare_emergence`` (PDF + PNG).
        overwrite: Replace a previous comparison in ``out`` (one holding ``compare.csv`` and
            nothing massmech did not write).

    Returns:
        :class:`Comparison`.

    Raises:
        ValueError: No runs, duplicate labels, or as many labels as runs not given.
        RunDirError: ``out`` is a non-empty folder that is not a previous comparison, or a
            previous one while ``overwrite`` is off.

    Example:
        >>> import massmech as mm
        >>> def analysis(name):
        ...     stats = mm.capture_stats(mm.load_model(name), ["some text"], progress=False)
        ...     return mm.frequency_analysis(stats, context_len=64)
        >>> cmp = mm.compare(("llama", analysis("tiny-llama")), ("qwen2", analysis("tiny-qwen2")))
        >>> cmp.table.groupby("run", sort=False).size().to_dict()
        {'llama': 5, 'qwen2': 5}
    """
    analyses = _resolve(runs, labels)
    table = _table(analyses)
    figures = {
        "compare_spectrum": plotting.compare_spectrum(analyses),
        "compare_emergence": plotting.compare_emergence(analyses),
    }
    if out is not None:
        config = {"runs": {label: str(run) if isinstance(run, (str, os.PathLike)) else "in memory"
                           for label, run in zip(analyses, runs, strict=True)},
                  "models": [_model_of(run, label) for label, run in zip(analyses, runs, strict=True)]}
        with atomic_run_dir(out, "compare", overwrite=overwrite) as tmp:
            write_json(tmp / "manifest.json", manifest(config))
            table.to_csv(tmp / "compare.csv", index=False)
            table.to_parquet(tmp / "compare.parquet", index=False)
            for name, fig in figures.items():
                plotting.save(fig, tmp / "figures" / name)
        out = Path(out)
    return Comparison(table=table, analyses=analyses, figures=figures, out=out)
