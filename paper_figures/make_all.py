"""Regenerate every paper figure into one folder: python paper_figures/make_all.py [--out figures]."""

from pathlib import Path

import fig_ablation
import fig_ablation_k
import fig_ablation_layers
import fig_bars3d
import fig_emergence
import fig_heatmap
import fig_spectrum
from _common import cli

FIGURES = (fig_heatmap, fig_bars3d, fig_emergence, fig_spectrum, fig_ablation, fig_ablation_k, fig_ablation_layers)

if __name__ == "__main__":
    args = cli(__doc__)
    out = Path(args.out)
    for spec in args.model:  # each model's analysis is computed once and shared by all figures
        for fig in FIGURES:
            print(fig.build(spec, out))
