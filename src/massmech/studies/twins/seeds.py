"""Twin claims over seeds, and at matched in-context accuracy.

One training run is one draw: the ratio of massive to mean M and the RoPE pair where the energy
peaks can move with the initial weights and the data order. With ``TwinsConfig.seeds`` the three
twins are trained again per extra seed (each seed's twins share their own initial weights), and
:func:`seed_table` reports every seed's numbers and their mean with a t interval over seeds.

A twin that learns in-context copying sooner could also concentrate Q/K sooner for that reason
alone. :func:`matched_accuracy` compares the twins where they are equally good at it: each at the
first checkpoint where its in-context accuracy reaches a level every twin reaches.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats as st

from massmech.studies.twins.config import TwinsConfig

SITES = ("q", "k", "v")


def per_seed(traj: pd.DataFrame, cfg: TwinsConfig) -> pd.DataFrame:
    """One row per (mechanism, seed, site) at the final checkpoint, later half of the layers:
    ``max_ratio`` (largest per-head max/mean ratio of M) and ``peak_pair`` (mean over those layers)."""
    late = cfg.n_layers // 2
    rows = []
    for v in cfg.variants:
        if not v.is_twin:
            continue
        t = traj[(traj.variant == v.name) & (traj.layer >= late)]
        t = t[t.step == t.step.max()]
        for site in SITES:
            s = t[t.site == site]
            if s.empty:
                continue
            rows.append({"mechanism": v.mechanism, "seed": cfg.seed_of(v), "site": site,
                         "max_ratio": float(s.max_ratio.max()), "peak_pair": float(s.peak_pair.mean())})
    return pd.DataFrame(rows, columns=["mechanism", "seed", "site", "max_ratio", "peak_pair"])


def seed_table(traj: pd.DataFrame, cfg: TwinsConfig, *, alpha: float = 0.05) -> pd.DataFrame:
    """Mean over seeds with a t interval (``NaN`` with one seed) per (mechanism, site, measure).

    Columns: ``mechanism, site, measure, mean, ci_low, ci_high, n_seeds, values``.

    >>> cfg = TwinsConfig(n_layers=2, seeds=(1,))
    >>> traj = pd.DataFrame({"variant": ["rope", "rope-seed1"], "layer": 1, "step": 9, "site": "k",
    ...                      "max_ratio": [4.0, 6.0], "peak_pair": [7, 9]})
    >>> row = seed_table(traj, cfg).query("measure == 'max_ratio'").iloc[0]
    >>> float(row["mean"]), int(row["n_seeds"]), row["values"]
    (5.0, 2, [4.0, 6.0])
    """
    rows = []
    for (mech, site), g in per_seed(traj, cfg).groupby(["mechanism", "site"], sort=False):
        for measure in ("max_ratio", "peak_pair"):
            x = g[measure].to_numpy(float)
            mean, n = float(x.mean()), len(x)
            half = float(st.t.ppf(1 - alpha / 2, n - 1) * x.std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan")
            rows.append({"mechanism": mech, "site": site, "measure": measure, "mean": mean, "ci_low": mean - half,
                         "ci_high": mean + half, "n_seeds": n, "values": [round(float(v), 4) for v in x]})
    return pd.DataFrame(rows, columns=["mechanism", "site", "measure", "mean", "ci_low", "ci_high", "n_seeds", "values"])


def matched_accuracy(traj: pd.DataFrame, scores: pd.DataFrame, cfg: TwinsConfig) -> pd.DataFrame:
    """Each twin's concentration at the first checkpoint reaching a common in-context accuracy.

    In-context accuracy is the mean of the ``<kind>_accuracy`` scores of a checkpoint. The level is
    the lowest, over the twin variants (every seed), of the best accuracy each reaches, so every
    twin reaches it; each twin variant is then read at its first checkpoint at or above it:
    ``max_ratio`` of Q, K and V over the later half of the layers, as :func:`seed_table`.

    Columns: ``mechanism, seed, variant, level, step, accuracy, site, max_ratio``.

    >>> cfg = TwinsConfig(n_layers=2)
    >>> scores = pd.DataFrame({"variant": ["rope", "rope", "nope", "nope", "absolute"], "step": [1, 2, 1, 2, 2],
    ...                        "metric": "kv_accuracy", "value": [0.65, 0.9, 0.1, 0.6, 0.7]})
    >>> traj = pd.DataFrame({"variant": ["rope", "rope", "nope", "nope", "absolute"], "step": [1, 2, 1, 2, 2],
    ...                      "layer": 1, "site": "k", "max_ratio": [3.0, 8.0, 2.0, 2.5, 2.2]})
    >>> t = matched_accuracy(traj, scores, cfg)
    >>> t[["variant", "step", "accuracy", "max_ratio"]].values.tolist()   # level 0.6 (nope's best): rope at step 1
    [['rope', 1, 0.65, 3.0], ['absolute', 2, 0.7, 2.2], ['nope', 2, 0.6, 2.5]]
    """
    cols = ["mechanism", "seed", "variant", "level", "step", "accuracy", "site", "max_ratio"]
    acc = scores[scores.metric.str.endswith("_accuracy")].groupby(["variant", "step"]).value.mean()
    twins = [v for v in cfg.variants if v.is_twin and v.name in acc.index.get_level_values(0)]
    if not twins:
        return pd.DataFrame(columns=cols)
    level = min(float(acc[v.name].max()) for v in twins)
    late = cfg.n_layers // 2
    rows = []
    for v in twins:
        a = acc[v.name]
        step = int(a[a >= level - 1e-12].index.min())
        t = traj[(traj.variant == v.name) & (traj.step == step) & (traj.layer >= late)]
        for site in SITES:
            s = t[t.site == site]
            if not s.empty:
                rows.append({"mechanism": v.mechanism, "seed": cfg.seed_of(v), "variant": v.name, "level": level,
                             "step": step, "accuracy": float(a[step]), "site": site, "max_ratio": float(s.max_ratio.max())})
    return pd.DataFrame(rows, columns=cols)
