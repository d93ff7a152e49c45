"""massmech figures: one module per study, one style (:mod:`.style`).

Every function takes tables (or an analysis) and an optional ``out`` path, and returns the
figure; ``out`` writes a PDF (fonts embedded as TrueType) and a PNG.
"""

from massmech.plotting.ablation import (
    ablation_bars,
    ablation_curve,
    ablation_layers,
    dose_response,
    pairs_effect,
)
from massmech.plotting.analyze import (
    bars_from_frame,
    compare_emergence,
    compare_spectrum,
    emergence,
    massive_heatmap,
    panels_frame,
    qk_head_bars,
    qk_head_panels,
    spectrum,
    token_dim_bars,
)
from massmech.plotting.mechanism import band_heatmap, heads_figure, shift_curve
from massmech.plotting.quant import qk_arms, quant_kv, quant_preservation, quant_qk, quant_tasks
from massmech.plotting.style import MAGNITUDE_CMAP, SITE_LABEL, close_all, save, use_style
from massmech.plotting.twins import twins_bands, twins_disruption, twins_trajectory

__all__ = [
    "MAGNITUDE_CMAP", "SITE_LABEL", "ablation_bars", "ablation_curve", "ablation_layers", "band_heatmap", "bars_from_frame", "compare_emergence",
    "compare_spectrum", "dose_response", "emergence", "massive_heatmap", "pairs_effect", "panels_frame", "qk_head_bars", "qk_head_panels", "quant_kv", "quant_preservation",
    "quant_tasks", "qk_arms", "quant_qk", "close_all", "save", "heads_figure", "shift_curve", "spectrum", "token_dim_bars", "twins_bands", "twins_disruption", "twins_trajectory",
    "use_style",
]
