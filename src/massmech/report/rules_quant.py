"""The ledger's rules on quantization (issue 26, item 6). P7 v2 compares quantizers head to head at
equal bits (:data:`PAIRS`); O11 judges the ``qk-draws`` grid (one rounding and one draw of rows is
not a result), where W_q/W_k are quantized at 4 bits per row
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

from massmech.files.runs import read_manifest
from massmech.report.rules import ALPHA, n_text
from massmech.stats import bootstrap_ci, holm, mcnemar_exact, sign_flip_exact
from massmech.studies.quant import EXAMPLES
from massmech.studies.quant.config import QuantSpec

KEEP_MASSIVE, KEEP_RANDOM, PLAIN = "qk-rtn-keep-massive", "qk-rtn-keep-random", "qk-rtn"


def _draw_labels(acc: pd.DataFrame) -> dict[tuple[str, int], str]:
    """``(method, draw) -> variant`` of the whole-model W_q/W_k variants with a stochastic draw."""
    rows = acc[acc.method.isin([KEEP_MASSIVE, KEEP_RANDOM, PLAIN]) & (acc.sites == "qk") & (acc.layers == "all")
               & (acc.draw >= 1)]
    return {(r.method, int(r.draw)): r.variant for r in rows.itertuples()}


def _scored(frame: pd.DataFrame, scorer: str) -> pd.DataFrame:
    """The rows of one scorer (a run from before scorers: exact match, ``strict``)."""
    return frame[frame.scorer.fillna("strict") == scorer] if "scorer" in frame else frame


def draws_table(path: Path, scorer: str = "strict") -> pd.DataFrame:
    """Per evaluable contextual task: each method's accuracy over the draws (mean, min, max), the
    paired massive-minus-random difference per example averaged over draws (mean and 95% bootstrap
    interval), its exact sign-flip p, Holm's p across the tasks, n and the draws used."""
    res = pd.read_parquet(path / "results.parquet")
    acc = _scored(res[res.measure == "accuracy"], scorer)
    labels = _draw_labels(acc)
    draws = sorted({d for m, d in labels if (KEEP_MASSIVE, d) in labels and (KEEP_RANDOM, d) in labels})
    draws = draws if len(draws) >= 2 else []  # one draw is not a result (the rule: at least 2 paired draws)
    ref = acc[(acc.variant == "none") & (acc.kind == "contextual") & acc.evaluable.isin([True])]
    examples = _scored(pd.read_parquet(path / EXAMPLES), scorer)
    rows = []
    for task in ref.task if draws else ():
        ex = examples[examples.task == task].pivot(index="uid", columns="variant", values="correct")
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


def qk_draws(path: Path, model: str, *, scorer: str = "strict") -> tuple[str, str]:
    """O11 v1: keep-massive above keep-random (Holm) on every evaluable contextual task: reproduces;
    below on some: contradicted; above on some, the rest not significant: partly; none significant:
    no difference detected; no evaluable contextual task or fewer than 2 paired draws: not evaluable."""
    if not (path / EXAMPLES).exists():
        return f"per-example verdicts not in {path / EXAMPLES} (the paired draws need them)", "not evaluable"
    t = draws_table(path, scorer)
    if t.empty:
        return (f"no evaluable contextual task scored {scorer}, or no paired stochastic draws of keep-massive and "
                "keep-random"), "not evaluable"

    def acc(v: tuple[float, float, float] | None) -> str:
        return "-" if v is None else f"{v[0]:.2f} ({v[1]:.2f}–{v[2]:.2f})"

    parts = [f"{r['task']}: none kept {acc(r[PLAIN])}, massive kept {acc(r[KEEP_MASSIVE])}, random kept "
             f"{acc(r[KEEP_RANDOM])}; massive − random {r['delta']:+.3f} [{r['delta_ci_low']:+.3f}, "
             f"{r['delta_ci_high']:+.3f}], sign-flip p {r['p_value']:.2g} (Holm {r['p_holm']:.2g}), n = {r['n']}"
             for r in t.to_dict("records")]
    text = (f"W_q/W_k at 4 bits per row, {int(t.draws.iloc[0])} stochastic roundings, scored {scorer} (mean "
            "accuracy over draws, min–max): " + "; ".join(parts))
    sig = t.p_holm < ALPHA
    up, down = sig & (t.delta > 0), sig & (t.delta < 0)
    verdict = ("contradicted" if down.any() else "reproduces" if up.all() else "partly" if up.any()
               else "no difference detected")
    return text, verdict


#: P7 v2's head-to-head pairs at equal bits: (protects outliers, does not), as quant study labels
PAIRS = (
    (QuantSpec("awq", 4, 64), QuantSpec("rtn", 4, 64)),
    (QuantSpec("smoothquant", 8), QuantSpec("w8a8-naive", 8)),
    *((QuantSpec(m, b), QuantSpec("kv-per-token", b)) for b in (4, 2) for m in ("kv-per-channel", "kv-massive-aware")),
)


def head_to_head_table(path: Path) -> pd.DataFrame:
    """Per (pair of :data:`PAIRS` in the run, task): both arms' accuracy, the exact McNemar test of
    the outlier-aware arm against the blind one on the same examples (``b``: aware right and blind
    wrong), and Holm's p across the run's evaluable contextual comparisons (``p_holm``; NaN elsewhere)."""
    res = pd.read_parquet(path / "results.parquet")
    acc = _scored(res[res.measure == "accuracy"], "strict")  # version 2 was fixed on exact match
    ref = acc[acc.variant == "none"].set_index("task")
    examples = _scored(pd.read_parquet(path / EXAMPLES), "strict")
    present = set(examples.variant)
    rows = []
    for aware, blind in PAIRS:
        if aware.label not in present or blind.label not in present:
            continue
        for task in ref.index:
            ex = examples[examples.task == task].pivot(index="uid", columns="variant", values="correct")
            a, b = ex[aware.label].to_numpy(float), ex[blind.label].to_numpy(float)
            up, down, p = mcnemar_exact(a, b)
            rows.append({"aware": aware.label, "blind": blind.label, "task": task, "kind": ref.kind[task],
                         "evaluable": bool(ref.evaluable.isin([True])[task]), "n": len(ex), "acc_aware": a.mean(),
                         "acc_blind": b.mean(), "b": up, "c": down, "p_value": p})
    t = pd.DataFrame(rows)
    if t.empty:
        return t
    fam = (t.kind == "contextual") & t.evaluable
    t["p_holm"] = np.nan
    t.loc[fam, "p_holm"] = holm(t[fam].p_value.tolist())
    return t


def head_to_head(path: Path, model: str) -> tuple[str, str]:
    """P7 v2: on evaluable contextual tasks, the outlier-aware arm significantly above its blind pair
    at equal bits on some comparison and below on none: reproduces; below on some and above on none:
    contradicted; both: partly; neither: no difference detected; no comparison: not evaluable."""
    if not (path / EXAMPLES).exists():
        return f"per-example verdicts not in {path / EXAMPLES} (the head-to-head tests need them)", "not evaluable"
    t = head_to_head_table(path)
    fam = t[(t.kind == "contextual") & t.evaluable] if len(t) else t
    if fam.empty:
        return "no head-to-head pair on an evaluable contextual task in this run", "not evaluable"

    def line(r: dict) -> str:
        return (f"{r['aware']} vs {r['blind']} / {r['task']}: {r['acc_aware']:.2f} vs {r['acc_blind']:.2f} "
                f"(b/c {r['b']}/{r['c']}" + (f", Holm p {r['p_holm']:.2g})" if r["p_holm"] == r["p_holm"] else ")"))

    par = t[(t.kind != "contextual") & t.evaluable]
    text = (f"contextual, exact McNemar, Holm across these {len(fam)} ({n_text(fam)}): "
            + "; ".join(line(r) for r in fam.to_dict("records"))
            + ("; parametric (descriptive): " + "; ".join(line(r) for r in par.to_dict("records")) if len(par) else ""))
    models = (read_manifest(path) or {}).get("model") or {}
    if any("Gemma3" in str(info.get("architecture")) for info in models.values() if isinstance(info, dict)):
        text += " (on Gemma-3 AWQ leaves q/k/v/o as RTN: it does not protect the Q/K outliers)"
    sig = fam.p_holm < ALPHA
    up, down = (sig & (fam.b > fam.c)).any(), (sig & (fam.c > fam.b)).any()
    verdict = ("partly" if up and down else "reproduces" if up else "contradicted" if down
               else "no difference detected")
    return text, verdict


def qk_draws_contains(path: Path, model: str) -> tuple[str, str]:
    """O11 v2: version 1 on the ``contains`` scorer's verdicts."""
    return qk_draws(path, model, scorer="contains")


def qk_draws_first_line(path: Path, model: str) -> tuple[str, str]:
    """O11 v3: version 1 on the ``first-line`` scorer's verdicts."""
    return qk_draws(path, model, scorer="first-line")
