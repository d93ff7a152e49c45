"""The ledger's rules on quantization draws (issue 26, item 6: one rounding and one draw of rows
is not a result): O11 judges the ``qk-draws`` grid, where W_q/W_k are quantized at 4 bits per row
with 10 stochastic roundings, and ``qk-rtn-keep-random`` draws its rows anew with each.

Each example is the unit: per contextual task, its paired difference is the number of draws in
which keeping the massive rows answered it right minus the number in which keeping as many random
rows did (an integer in ``[-draws, draws]``), tested with the exact sign-flip test
(:func:`massmech.stats.sign_flip_exact`) and corrected by Holm across the model's evaluable
contextual tasks.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from massmech.report.rules import ALPHA
from massmech.stats import bootstrap_ci, holm, sign_flip_exact
from massmech.studies.quant import EXAMPLES

KEEP_MASSIVE, KEEP_RANDOM, PLAIN = "qk-rtn-keep-massive", "qk-rtn-keep-random", "qk-rtn"


def _draw_labels(acc: pd.DataFrame) -> dict[tuple[str, int], str]:
    """``(method, draw) -> variant`` of the whole-model W_q/W_k variants with a stochastic draw."""
    rows = acc[acc.method.isin([KEEP_MASSIVE, KEEP_RANDOM, PLAIN]) & (acc.sites == "qk") & (acc.layers == "all")
               & (acc.draw >= 1)]
    return {(r.method, int(r.draw)): r.variant for r in rows.itertuples()}


def draws_table(path: Path) -> pd.DataFrame:
    """Per evaluable contextual task: each method's accuracy over the draws (mean, min, max), the
    paired massive-minus-random difference per example averaged over draws (mean and 95% bootstrap
    interval), its exact sign-flip p, Holm's p across the tasks, n and the draws used."""
    res = pd.read_parquet(path / "results.parquet")
    acc = res[res.measure == "accuracy"]
    labels = _draw_labels(acc)
    draws = sorted({d for m, d in labels if (KEEP_MASSIVE, d) in labels and (KEEP_RANDOM, d) in labels})
    ref = acc[(acc.variant == "none") & (acc.kind == "contextual") & acc.evaluable.isin([True])]
    examples = pd.read_parquet(path / EXAMPLES)
    rows = []
    for task in ref.task:
        ex = examples[examples.task == task].pivot(index="uid", columns="variant", values="correct")
        if not draws:
            break
        diff = sum(ex[labels[KEEP_MASSIVE, d]].astype(int) - ex[labels[KEEP_RANDOM, d]].astype(int) for d in draws)
        row = {"task": task, "n": len(ex), "draws": len(draws), "p_value": sign_flip_exact(diff.to_numpy()),
               "delta": float(diff.mean()) / len(draws)}
        row["delta_ci_low"], row["delta_ci_high"] = (v / len(draws) for v in bootstrap_ci(diff.to_numpy(float)))
        for method in (PLAIN, KEEP_MASSIVE, KEEP_RANDOM):
            per_draw = [float(ex[labels[method, d]].mean()) for d in draws if (method, d) in labels]
            row[method] = (float(np.mean(per_draw)), min(per_draw), max(per_draw)) if per_draw else None
        rows.append(row)
    table = pd.DataFrame(rows)
    if len(table):
        table["p_holm"] = holm(table.p_value.tolist())
    return table


def qk_draws(path: Path, model: str) -> tuple[str, str]:
    """O11 v1: keep-massive above keep-random (Holm) on every evaluable contextual task: reproduces;
    below on some: contradicted; above on some, the rest not significant: partly; none significant:
    no difference detected; no evaluable contextual task or fewer than 2 paired draws: not evaluable."""
    if not (path / EXAMPLES).exists():
        return f"per-example verdicts not in {path / EXAMPLES} (the paired draws need them)", "not evaluable"
    t = draws_table(path)
    if t.empty:
        return "no evaluable contextual task, or no paired stochastic draws of keep-massive and keep-random", \
            "not evaluable"

    def acc(v: tuple[float, float, float] | None) -> str:
        return "-" if v is None else f"{v[0]:.2f} ({v[1]:.2f}–{v[2]:.2f})"

    parts = [f"{r['task']}: none kept {acc(r[PLAIN])}, massive kept {acc(r[KEEP_MASSIVE])}, random kept "
             f"{acc(r[KEEP_RANDOM])}; massive − random {r['delta']:+.3f} [{r['delta_ci_low']:+.3f}, "
             f"{r['delta_ci_high']:+.3f}], sign-flip p {r['p_value']:.2g} (Holm {r['p_holm']:.2g}), n = {r['n']}"
             for r in t.to_dict("records")]
    text = (f"W_q/W_k at 4 bits per row, {int(t.draws.iloc[0])} stochastic roundings (mean accuracy over draws, "
            "min–max): " + "; ".join(parts))
    sig = t.p_holm < ALPHA
    up, down = sig & (t.delta > 0), sig & (t.delta < 0)
    verdict = ("contradicted" if down.any() else "reproduces" if up.all() else "partly" if up.any()
               else "no difference detected")
    return text, verdict
