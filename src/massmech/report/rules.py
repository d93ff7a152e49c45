"""The ledger's rules: each reads one run folder and returns, for one model, what was measured and a
verdict (``reproduces``, ``partly``, ``contradicted``, ``not evaluable``).

These are the version-1 rules, fixed on 2026-11-30; a rule is never edited once committed: a
changed rule is a new judge (:mod:`massmech.report.rules_v2`) and a new
:class:`~massmech.report.ledger.Rule` version in :data:`~massmech.report.ledger.CLAIMS`, and the
ledger shows the verdicts of every version.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pandas as pd

from massmech.files.runs import CELLS_CREATED_KEY
from massmech.report.tables import emergence_lines
from massmech.stats import holm
from massmech.studies.quant.config import QK_METHODS

ALPHA = 0.05  # every family's level


class NoData(Exception):
    """The run folder exists but holds nothing for this model."""


def run_finished(path: Path) -> bool:
    """Whether a run folder holds its results (a study still running has only its manifest).

    >>> run_finished(Path("no/such/run"))
    False
    """
    return any((path / f).is_file() for f in ("summary.json", "analysis/summary.json", "results.parquet"))


def made_at(manifest: dict) -> str | None:
    """When a run's numbers were made: the older of its manifest's ``created`` and its oldest cell's.

    A run rebuilt from stored cells is written now, but its numbers are as old as its cells.

    >>> made_at({"created": "2026-12-06T12:00:00+00:00", "cells_created": {"first": "2026-12-05T16:27:50+00:00"}})
    '2026-12-05T16:27:50+00:00'
    >>> made_at({"created": "2026-12-06T12:00:00+00:00"})
    '2026-12-06T12:00:00+00:00'
    """
    times = [t for t in (manifest.get("created"), (manifest.get(CELLS_CREATED_KEY) or {}).get("first")) if t]
    return min(times, key=dt.datetime.fromisoformat) if times else None


def summary_of(path: Path) -> dict:
    f = path / "summary.json" if (path / "summary.json").is_file() else path / "analysis" / "summary.json"
    return json.loads(f.read_text())


# --------------------------------------------------------------------------- rules
def low_frequency(path: Path, model: str, *, stage: str = "pre") -> tuple[str, str]:
    s = summary_of(path)["by_stage"]
    q, k = s[f"q.{stage}"]["massive_low_band_share"], s[f"k.{stage}"]["massive_low_band_share"]
    eq, ek = s[f"q.{stage}"]["low_band_energy_fraction"], s[f"k.{stage}"]["low_band_energy_fraction"]
    if q is None or k is None:
        return "no λ-massive dim in Q or K (nothing to locate)", "not evaluable"
    text = (f"massive dims in the low band: Q {q:.0%}, K {k:.0%}; low-band energy Q {eq:.0%}, K {ek:.0%} "
            f"(λ=5, pre-RoPE)")
    verdict = "reproduces" if min(q, k) >= 0.9 else "partly" if min(q, k) >= 0.5 else "contradicted"
    return text, verdict


def across_heads(path: Path, model: str, *, stage: str = "pre") -> tuple[str, str]:
    m = pd.read_parquet(path / "massive.parquet")
    m = m[(m.stage == stage) & m.site.isin(["q", "k"])]
    shares = []
    for (_, _), g in m.groupby(["site", "layer"]):
        heads = g["head"].nunique()
        if heads < 2:
            continue
        modal = g.pair.mode().iloc[0]
        shares.append(g[g.pair == modal]["head"].nunique() / heads)
    if not shares:
        return "fewer than two heads with massive dims in any layer", "not evaluable"
    share = float(pd.Series(shares).mean())
    verdict = "reproduces" if share >= 0.5 else "partly" if share >= 0.25 else "contradicted"
    return (f"heads with massive dims that share their layer's most common pair: {share:.0%} "
            f"(mean over {len(shares)} Q/K layers)", verdict)


def qk_not_v(path: Path, model: str) -> tuple[str, str]:
    s = summary_of(path)["by_stage"]
    q, k, v = s["q.pre"]["massive_count"], s["k.pre"]["massive_count"], s["v.pre"]["massive_count"]
    if min(q, k) == 0:
        return f"λ-massive dims: Q {q}, K {k}, V {v} (none in Q or K to compare V with)", "not evaluable"
    verdict = "reproduces" if v == 0 and min(q, k) > 0 else "partly" if v < 0.1 * min(q, k) else "contradicted"
    return f"λ-massive dims: Q {q}, K {k}, V {v}", verdict


def early(path: Path, model: str) -> tuple[str, str]:
    s = summary_of(path)
    n, em = s["n_layers"], s["emergence"]
    main = {site: em[site]["layer"] for site in ("q", "k")}
    m = pd.read_parquet(path / "massive.parquet")
    first = {site: (int(m[(m.site == site) & (m.stage == "pre")].layer.min()) if ((m.site == site) & (m.stage == "pre")).any()
                    else None) for site in ("q", "k")}
    text = ("; ".join(line.strip() for line in emergence_lines(s)[1:])
            + "; first layer with a λ-massive dim (λ = 5, pre-RoPE): "
            + ", ".join(f"{site.upper()} {'none' if v is None else v}" for site, v in first.items()))
    early = [v is not None and v < n / 4 for v in main.values()]
    return text, "reproduces" if all(early) else "partly" if any(early) else "contradicted"


def sweep_rows(path: Path, model: str, kind: str) -> pd.DataFrame:
    t = pd.read_parquet(path / "results.parquet")
    t = t[(t.model == model) & (t.kind == kind)]
    if t.empty:
        raise NoData(f"no {kind} rows for {model} in {path}")
    return t


def n_text(rows: pd.DataFrame) -> str:
    lo, hi = int(rows.n.min()), int(rows.n.max())
    return f"n = {lo}" if lo == hi else f"n = {lo}–{hi}"


NOT_EVALUABLE = "no {kind} task is evaluable (baselines at chance or floor)"


def evaluable_rows(path: Path, model: str, kind: str) -> pd.DataFrame:
    """The massive rows of one kind of task whose baseline is clearly above chance."""
    t = sweep_rows(path, model, kind)
    return t[(t.role == "massive") & t.evaluable.isin([True])]


def contextual(path: Path, model: str) -> tuple[str, str]:
    ev = evaluable_rows(path, model, "contextual")
    if ev.empty:
        return NOT_EVALUABLE.format(kind="contextual"), "not evaluable"
    drop = ev[(ev.p_holm < 0.05) & (ev.delta < 0)]
    vs = ev[(ev.p_vs_matched_holm < 0.05) & (ev.c_vs_matched > ev.b_vs_matched)]
    deltas = ", ".join(f"{r.task} {r.delta:+.2f}" for r in ev.itertuples())
    text = (f"`{ev.condition.iloc[0]}`, {n_text(ev)}: "
            f"{len(drop)} of {len(ev)} evaluable contextual tasks drop vs baseline (exact McNemar, Holm): {deltas}; "
            f"{len(vs)} of {len(ev)} also below the variance-matched control")
    verdict = ("reproduces" if len(drop) == len(ev) and len(vs) == len(ev)
               else "partly" if len(drop) else "contradicted")
    return text, verdict


def parametric(path: Path, model: str) -> tuple[str, str]:
    ev = evaluable_rows(path, model, "parametric")
    if ev.empty:
        return NOT_EVALUABLE.format(kind="parametric"), "not evaluable"
    drop = ev[(ev.p_holm < 0.05) & (ev.delta < 0)]
    deltas = ", ".join(f"{r.task} {r.delta:+.2f}" for r in ev.itertuples())
    text = (f"`{ev.condition.iloc[0]}`, {n_text(ev)}: "
            f"{len(drop)} of {len(ev)} evaluable parametric tasks drop vs baseline (Holm): {deltas}")
    verdict = "reproduces" if not len(drop) else "partly" if len(drop) < len(ev) else "contradicted"
    return text, verdict


def matched_variance_ratio(t: pd.DataFrame, model: str, task: str, condition: str) -> float | None:
    """The removed variance of a massive condition's variance-matched control ÷ its own, on one task
    (``None`` where there is no such control or the massive condition removed none): near 1 when the
    control matched; below it when even every other allowed dim could not remove as much.

    >>> t = pd.DataFrame({"model": "m", "task": "t", "control": [None, "matched"], "removed_variance": [2.0, 0.5],
    ...                   "condition": ["qk.post.top22.zero", "qk.post.top22.zero.ctrl-matched-s0"]})
    >>> matched_variance_ratio(t, "m", "t", "qk.post.top22.zero")
    0.25
    """
    if not {"control", "removed_variance"} <= set(t.columns):
        return None
    own = t[(t.model == model) & (t.task == task) & (t.condition == condition)].removed_variance
    ctrl = t[(t.model == model) & (t.task == task) & (t.control == "matched")
             & t.condition.str.startswith(condition + ".ctrl-")].removed_variance
    if len(own) != 1 or len(ctrl) != 1 or not own.iloc[0] > 0:
        return None
    return float(ctrl.iloc[0] / own.iloc[0])


def matched(path: Path, model: str) -> tuple[str, str]:
    t = pd.read_parquet(path / "results.parquet")
    if not (t.model == model).any():
        raise NoData(f"no rows for {model} in {path}")
    ev = t[(t.model == model) & (t.role == "massive") & t.evaluable]
    if ev.empty:
        return "no task is evaluable (baselines at chance or floor)", "not evaluable"
    sep = ev[(ev.p_vs_matched_holm < 0.05) & (ev.c_vs_matched > ev.b_vs_matched)]
    names = ", ".join(f"{r.task} ({r.kind})" for r in sep.itertuples()) or "none"
    text = f"massive below its variance-matched control (Holm) on {len(sep)} of {len(ev)} evaluable tasks: {names}"
    above = ev[(ev.p_vs_matched_holm < 0.05) & (ev.b_vs_matched > ev.c_vs_matched)]
    if len(above):  # the other direction: the same variance taken from random dims hurts more
        text += f"; above it on {len(above)}: " + ", ".join(f"{r.task} ({r.kind})" for r in above.itertuples())
    ratio = [v for r in ev.itertuples() if (v := matched_variance_ratio(t, model, r.task, r.condition)) is not None]
    if ratio:
        text += f" (control's removed variance ÷ massive's: {min(ratio):.2f}–{max(ratio):.2f})"
    verdict = "reproduces" if len(sep) == len(ev) else "partly" if len(sep) else "contradicted"
    return text, verdict


def quant_protect(path: Path, model: str, *, qk_arm: bool = False) -> tuple[str, str]:
    """The whole-model quantizers (P7), or the W_q/W_k-only arm (O3), each with Holm across its own
    (variant, evaluable contextual task) comparisons."""
    t = pd.read_parquet(path / "results.parquet")
    acc = t[(t.measure == "accuracy") & (t.kind == "contextual") & (t.variant != "none")]
    acc = acc[acc.method.isin(QK_METHODS) == qk_arm]
    if "scorer" in acc:  # version 1 was fixed on exact match: the strict scorer's rows, Holm across them
        acc = acc[acc.scorer.fillna("strict") == "strict"]
    ev = acc[acc.evaluable.isin([True])]
    if ev.empty:
        return "no contextual task is evaluable" if len(acc) else "no such variant in this run", "not evaluable"
    ev = ev.assign(p_holm=pd.Series(holm(ev.p_value.tolist()), index=ev.index, dtype=float))
    hurt = ev[(ev.p_holm < 0.05) & (ev.c > ev.b)]
    text = (f"{len(hurt)} of {len(ev)} (variant, contextual task) pairs significantly below the unquantized model "
            f"(for the embedded models, a dequantized GGUF) "
            f"({n_text(ev)}, exact McNemar, Holm across these {len(ev)})"
            + (": " + ", ".join(f"{r.variant}/{r.task}" for r in hurt.itertuples()) if len(hurt) else ""))
    if hurt.empty:
        return text + "; no quantizer moves contextual accuracy at this n", "not evaluable"
    protects = hurt.outlier_aware.astype(bool)
    verdict = "reproduces" if not protects.any() else "partly" if (~protects).any() else "contradicted"
    return text, verdict


def qk_arm(path: Path, model: str) -> tuple[str, str]:
    text, verdict = quant_protect(path, model, qk_arm=True)
    return "W_q/W_k only, 4 bits, massive rows kept vs random rows kept vs none: " + text, verdict


def _holds(r: dict, factor: float) -> bool:
    """RoPE's weaker of Q/K above ``factor`` times every other twin's stronger."""
    rope = min(r["rope"]["q"], r["rope"]["k"])
    return all(rope > factor * max(v["q"], v["k"]) for m, v in r.items() if m != "rope" and isinstance(v, dict))


def rope_verdict(checks: list[dict]) -> str:
    return ("reproduces" if all(_holds(r, 1.5) for r in checks)
            else "partly" if all(_holds(r, 1.0) for r in checks) else "contradicted")


def rope_cause(path: Path, model: str) -> tuple[str, str]:
    summary = summary_of(path)
    tw = summary["twins"]
    others = {m: max(r["q"], r["k"]) for m, r in tw.items() if m != "rope"}
    text = ("largest per-head max/mean of M (later layers, final step): RoPE twin Q/K "
            f"{tw['rope']['q']:.1f}/{tw['rope']['k']:.1f}; " + ", ".join(f"{m} {v:.1f}" for m, v in others.items()))
    seeds = {k: v for k, v in summary.get("seeds", {}).items() if k.endswith(".k.max_ratio") and v["n_seeds"] > 1}
    if seeds:
        text += "; K over " + str(max(v["n_seeds"] for v in seeds.values())) + " seeds (mean, 95% t interval): " + ", ".join(
            f"{k.split('.')[0]} {v['mean']:.1f} [{v['ci'][0]:.1f}, {v['ci'][1]:.1f}]" for k, v in seeds.items())
    matched = summary.get("matched_accuracy") or {}
    at_level = {m: r for m, r in matched.items() if isinstance(r, dict) and {"q", "k"} <= set(r)}
    if "rope" in at_level and matched.get("level") is not None:
        text += (f"; at matched in-context accuracy ({matched['level']:.2f}): RoPE Q/K "
                 f"{at_level['rope']['q']:.1f}/{at_level['rope']['k']:.1f}, " + ", ".join(
                     f"{m} {max(r['q'], r['k']):.1f}" for m, r in at_level.items() if m != "rope"))
        if matched["level"] < 0.05:  # descriptive only: the verdict's rule is unchanged
            text += " (a level near floor: the weakest twin never learns the in-context tasks at this scale)"
    text += " (toy twins trained here; no pretrained non-RoPE model offline)"
    checks = [tw] + ([at_level] if "rope" in at_level else [])
    return text, rope_verdict(checks)


def wavelength(path: Path, model: str) -> tuple[str, str]:
    w = summary_of(path).get("wavelength", {})
    vals = [v for r in w.values() for v in r.values() if v == v]
    if not vals:
        return "no RoPE variant wavelengths in the summary", "not evaluable"
    return (f"peak pair wavelength ÷ training context, RoPE variants: {min(vals):.2f}–{max(vals):.2f} "
            "(inside the low band: longer than the context)", "reproduces" if min(vals) >= 1 else "partly")
