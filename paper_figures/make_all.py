"""Regenerate every paper figure from the run folders: python paper_figures/make_all.py [--out figures] [--runs runs].

Figures only read runs; `make analyze ablate quant twins` produce them (a missing one says which)."""

from pathlib import Path

import fig_ablation
import fig_ablation_k
import fig_ablation_layers
import fig_bars3d
import fig_emergence
import fig_heatmap
import fig_quant_kv
import fig_quant_preservation
import fig_quant_tasks
import fig_spectrum
import fig_twins_bands
import fig_twins_disruption
import fig_twins_trajectory
from _common import cli

FIGURES = (fig_heatmap, fig_bars3d, fig_emergence, fig_spectrum, fig_ablation, fig_quant_tasks, fig_quant_preservation,
           fig_quant_kv)
GRID_FIGURES = (fig_ablation_k, fig_ablation_layers)  # `make ablate` runs the grid sweeps on the default model
GRID_MODEL = "smollm2-135m"
TWIN_FIGURES = (fig_twins_trajectory, fig_twins_bands, fig_twins_disruption)  # one set, not per model


def _draw(build, *args) -> str | None:
    """Draw one figure; a missing run is reported (and the rest still drawn), not raised."""
    try:
        print(build(*args))
    except SystemExit as e:
        return str(e)
    return None


if __name__ == "__main__":
    args = cli(__doc__)
    out = Path(args.out)
    missing: list[str | None] = []
    for spec in args.model:  # figures read the runs of `make analyze`, `make ablate`, `make quant`
        for fig in FIGURES:
            missing.append(_draw(fig.build, spec, out))
        for fig in GRID_FIGURES:  # optional beyond the default model
            gap = _draw(fig.build, spec, out)
            if gap and spec != GRID_MODEL:
                print(f"not drawn (optional): {gap}")
                gap = None
            missing.append(gap)
    for fig in TWIN_FIGURES:  # the twins study (runs/twins/demo, from `make twins`)
        missing.append(_draw(fig.build, out))
    missing = [m for m in missing if m]
    for m in missing:  # every figure that could be drawn was; each missing run is named with its target
        print(f"not drawn: {m}")
    raise SystemExit(1 if missing else 0)
