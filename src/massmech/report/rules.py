"""The ledger's rules: each reads one run folder and returns, for one model, what was measured and a
verdict (``reproduces``, ``partly``, ``contradicted``, ``not evaluable``).

A rule is never edited once its runs exist: a changed rule is a new function here and a new
:class:`~massmech.report.ledger.Rule` version in :data:`~massmech.report.ledger.CLAIMS`, and the
ledger shows the verdicts of every version. The ``*_v2`` rules answer the audit of issue 26
(decidability, the base rate of O4, a check at floor accuracy, V's share).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from massmech.infra.cells import CELL_FILE
from massmech.infra.study import CELLS
from massmech.report.tables import emergence_lines
from massmech.stats import holm, paired_bootstrap_interaction
from massmech.stats.power import decidable, min_detectable_effect
from massmech.studies.quant.config import QK_METHODS
from massmech.studies.twins.config import Variant

ALPHA = 0.05  # every family's level


class NoData(Exception):
    """The run folder exists but holds nothing for this model."""


def run_finished(path: Path) -> bool:
    """Whether a run folder holds its results (a study still running has only its manifest).

    >>> run_finished(Path("no/such/run"))
    False
    """
    return any((path / f).is_file() for f in ("summary.json", "analysis/summary.json", "results.parquet"))


def summary_of(path: Path) -> dict:
    f = path / "summary.json" if (path / "summary.json").is_file() else path / "analysis" / "summary.json"
    return json.loads(f.read_text())


# --------------------------------------------------------------------------- rules
def low_frequency(path: Path, model: str) -> tuple[str, str]:
    s = summary_of(path)["by_stage"]
    q, k = s["q.pre"]["massive_low_band_share"], s["k.pre"]["massive_low_band_share"]
    eq, ek = s["q.pre"]["low_band_energy_fraction"], s["k.pre"]["low_band_energy_fraction"]
    if q is None or k is None:
        return "no λ-massive dim in Q or K (nothing to locate)", "not evaluable"
    text = (f"massive dims in the low band: Q {q:.0%}, K {k:.0%}; low-band energy Q {eq:.0%}, K {ek:.0%} "
            f"(λ=5, pre-RoPE)")
    verdict = "reproduces" if min(q, k) >= 0.9 else "partly" if min(q, k) >= 0.5 else "contradicted"
    return text, verdict


def across_heads(path: Path, model: str) -> tuple[str, str]:
    m = pd.read_parquet(path / "massive.parquet")
    m = m[(m.stage == "pre") & m.site.isin(["q", "k"])]
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


def _n(rows: pd.DataFrame) -> str:
    lo, hi = int(rows.n.min()), int(rows.n.max())
    return f"n = {lo}" if lo == hi else f"n = {lo}–{hi}"


NOT_EVALUABLE = "no {kind} task is evaluable (baselines at chance or floor)"


def _evaluable(path: Path, model: str, kind: str) -> pd.DataFrame:
    """The massive rows of one kind of task whose baseline is clearly above chance."""
    t = sweep_rows(path, model, kind)
    return t[(t.role == "massive") & t.evaluable.isin([True])]


def contextual(path: Path, model: str) -> tuple[str, str]:
    ev = _evaluable(path, model, "contextual")
    if ev.empty:
        return NOT_EVALUABLE.format(kind="contextual"), "not evaluable"
    drop = ev[(ev.p_holm < 0.05) & (ev.delta < 0)]
    vs = ev[(ev.p_vs_matched_holm < 0.05) & (ev.c_vs_matched > ev.b_vs_matched)]
    deltas = ", ".join(f"{r.task} {r.delta:+.2f}" for r in ev.itertuples())
    text = (f"`{ev.condition.iloc[0]}`, {_n(ev)}: "
            f"{len(drop)} of {len(ev)} evaluable contextual tasks drop vs baseline (exact McNemar, Holm): {deltas}; "
            f"{len(vs)} of {len(ev)} also below the variance-matched control")
    verdict = ("reproduces" if len(drop) == len(ev) and len(vs) == len(ev)
               else "partly" if len(drop) else "contradicted")
    return text, verdict


def parametric(path: Path, model: str) -> tuple[str, str]:
    ev = _evaluable(path, model, "parametric")
    if ev.empty:
        return NOT_EVALUABLE.format(kind="parametric"), "not evaluable"
    drop = ev[(ev.p_holm < 0.05) & (ev.delta < 0)]
    deltas = ", ".join(f"{r.task} {r.delta:+.2f}" for r in ev.itertuples())
    text = (f"`{ev.condition.iloc[0]}`, {_n(ev)}: "
            f"{len(drop)} of {len(ev)} evaluable parametric tasks drop vs baseline (Holm): {deltas}")
    verdict = "reproduces" if not len(drop) else "partly" if len(drop) < len(ev) else "contradicted"
    return text, verdict


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
    ratio = (ev.set_index("task").removed_variance
             / t[(t.model == model) & (t.control == "matched")].set_index("task").removed_variance).dropna()
    if len(ratio):
        text += f" (control's removed variance ÷ massive's: {1 / ratio.max():.2f}–{1 / ratio.min():.2f})"
    verdict = "reproduces" if len(sep) == len(ev) else "partly" if len(sep) else "contradicted"
    return text, verdict


def quant_protect(path: Path, model: str, *, qk_arm: bool = False) -> tuple[str, str]:
    """The whole-model quantizers (P7), or the W_q/W_k-only arm (O3), each with Holm across its own
    (variant, evaluable contextual task) comparisons."""
    t = pd.read_parquet(path / "results.parquet")
    acc = t[(t.measure == "accuracy") & (t.kind == "contextual") & (t.variant != "none")]
    acc = acc[acc.method.isin(QK_METHODS) == qk_arm]
    ev = acc[acc.evaluable.isin([True])]
    if ev.empty:
        return "no contextual task is evaluable" if len(acc) else "no such variant in this run", "not evaluable"
    ev = ev.assign(p_holm=pd.Series(holm(ev.p_value.tolist()), index=ev.index, dtype=float))
    hurt = ev[(ev.p_holm < 0.05) & (ev.c > ev.b)]
    text = (f"{len(hurt)} of {len(ev)} (variant, contextual task) pairs significantly below the unquantized model "
            f"(for the embedded models, a dequantized GGUF) "
            f"({_n(ev)}, exact McNemar, Holm across these {len(ev)})"
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


def _rope_verdict(checks: list[dict]) -> str:
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
    return text, _rope_verdict(checks)


def wavelength(path: Path, model: str) -> tuple[str, str]:
    w = summary_of(path).get("wavelength", {})
    vals = [v for r in w.values() for v in r.values() if v == v]
    if not vals:
        return "no RoPE variant wavelengths in the summary", "not evaluable"
    return (f"peak pair wavelength ÷ training context, RoPE variants: {min(vals):.2f}–{max(vals):.2f} "
            "(inside the low band: longer than the context)", "reproduces" if min(vals) >= 1 else "partly")


# --------------------------------------------------------------------------- version 2 (issue 26)
def qk_not_v_v2(path: Path, model: str) -> tuple[str, str]:
    """P3 v2: V's λ-massive dims below 10% of the fewer of Q's and K's: reproduces; below 25%: partly."""
    s = summary_of(path)["by_stage"]
    q, k, v = s["q.pre"]["massive_count"], s["k.pre"]["massive_count"], s["v.pre"]["massive_count"]
    if min(q, k) == 0:
        return f"λ-massive dims: Q {q}, K {k}, V {v} (none in Q or K to compare V with)", "not evaluable"
    share = v / min(q, k)
    m = pd.read_parquet(path / "massive.parquet")
    layers = sorted({int(x) for x in m[(m.site == "v") & (m.stage == "pre")].layer})
    where = f", V's at layer{'s' if len(layers) > 1 else ''} {', '.join(map(str, layers))}" if layers else ""
    verdict = "reproduces" if share < 0.10 else "partly" if share < 0.25 else "contradicted"
    return f"λ-massive dims: Q {q}, K {k}, V {v} (V = {share:.1%} of the fewer of Q and K{where})", verdict


def first_massive_layer(path: Path) -> dict[str, int | None]:
    """Per site (``q``, ``k``), the first layer with a λ-massive dim before RoPE (``None``: none)."""
    m = pd.read_parquet(path / "massive.parquet")
    m = m[m.stage == "pre"]
    return {site: (int(m[m.site == site].layer.min()) if (m.site == site).any() else None) for site in ("q", "k")}


def early_v2(path: Path, model: str) -> tuple[str, str]:
    """P4 v2: the claim is about where massive values *appear*: the first layer with a λ-massive Q and K dim.

    Both in the first quarter of the layers: reproduces if the robust concentration layer is there too,
    else partly (they appear early, concentrate later); one of Q and K: partly; neither: contradicted.
    """
    s = summary_of(path)
    n, first = s["n_layers"], first_massive_layer(path)
    robust = {site: s["emergence"][site]["layer"] for site in ("q", "k")}

    def early(v: int | None) -> bool:
        return v is not None and v < n / 4

    def said(d: dict) -> str:
        return ", ".join(f"{site.upper()} {'none' if v is None else v}" for site, v in d.items())

    text = (f"first layer with a λ-massive dim (λ = 5, pre-RoPE): {said(first)}; robust concentration layer "
            f"(bootstrap over chunks, band factor 1): {said(robust)}; of {n} layers (first quarter: < {n / 4:g})")
    if all(map(early, first.values())):
        return text, "reproduces" if all(map(early, robust.values())) else "partly"
    return text, "partly" if any(map(early, first.values())) else "contradicted"


def _successes(rows: pd.DataFrame) -> pd.DataFrame:
    """Each massive row's successes, its baseline's and its matched control's, from its own counts.

    ``b``/``c`` against the baseline: disrupted right only / baseline right only; against the
    control: massive right only / control right only. So baseline = massive + c - b and
    control = massive - b_vs_matched + c_vs_matched.
    """
    s = (rows.accuracy * rows.n).round().astype(int)
    ctrl = s - rows.b_vs_matched.astype("Int64") + rows.c_vs_matched.astype("Int64")
    return rows.assign(s_massive=s, s_baseline=s + rows.c.astype(int) - rows.b.astype(int), s_control=ctrl)


def _family(t: pd.DataFrame, column: str) -> int:
    """Tests in a Holm family of the run's table: the rows whose corrected p exists."""
    return max(1, int(t[column].notna().sum()))


def contextual_v2(path: Path, model: str) -> tuple[str, str]:
    """P5 and O2 v2: as version 1, but a comparison that cannot reach the family's α is not counted.

    A drop vs baseline needs the baseline's successes, a drop below the control the control's
    (:func:`massmech.stats.power.decidable`, at the first Holm step of the table's family). When no
    task's comparison with its control is decidable (both arms at floor) the verdict is ``not
    evaluable``: both remove the task, so the massive dims cannot be told apart from any others.
    Each task also shows the smallest drop its family detects with 80% power (MDE).
    """
    t = pd.read_parquet(path / "results.parquet")
    ev = _evaluable(path, model, "contextual")
    if ev.empty:
        return NOT_EVALUABLE.format(kind="contextual"), "not evaluable"
    ev = _successes(ev)
    m_base, m_ctrl = _family(t, "p_holm"), _family(t, "p_vs_matched_holm")
    dec_base = [decidable(int(r.s_baseline), int(r.n), alpha=ALPHA, n_tests=m_base) for r in ev.itertuples()]
    dec_ctrl = [r.s_control is not pd.NA and decidable(int(r.s_control), int(r.n), alpha=ALPHA, n_tests=m_ctrl)
                for r in ev.itertuples()]
    ev = ev.assign(dec_base=dec_base, dec_ctrl=dec_ctrl)
    drop = ev[ev.dec_base & (ev.p_holm < 0.05) & (ev.delta < 0)]
    decided = ev[ev.dec_ctrl]
    below = decided[(decided.p_vs_matched_holm < 0.05) & (decided.c_vs_matched > decided.b_vs_matched)]

    def one(r) -> str:
        mde = min_detectable_effect(int(r.n), r.s_baseline / r.n, alpha=ALPHA, n_tests=m_base)
        ctrl = (f"control {r.s_control}/{r.n} right, b/c {r.b_vs_matched}/{r.c_vs_matched}"
                + ("" if r.dec_ctrl else ", undecidable"))
        return f"{r.task} {r.delta:+.2f} (MDE {'-' if mde is None else f'{mde:.2f}'}; {ctrl})"

    text = (f"`{ev.condition.iloc[0]}`, {_n(ev)}, Holm over {m_base} (vs baseline) and {m_ctrl} (vs control): "
            f"{len(drop)} of {len(ev)} evaluable contextual tasks drop vs baseline; {len(below)} of {len(decided)} "
            f"with a decidable control comparison below the variance-matched control: "
            + "; ".join(one(r) for r in ev.itertuples()))
    if decided.empty:
        return text + " (the control removes the task too: nothing to tell them apart)", "not evaluable"
    verdict = ("reproduces" if len(drop) == len(below) == len(decided) == len(ev)
               else "partly" if len(drop) else "contradicted")
    return text, verdict


def rope_cause_v2(path: Path, model: str) -> tuple[str, str]:
    """P8 v2: as version 1, but a check at floor accuracy (matched level < 0.05) is not evaluable and is
    left out; the verdict comes from the final-step check alone, and the text says so."""
    text, verdict = rope_cause(path, model)
    level = (summary_of(path).get("matched_accuracy") or {}).get("level")
    if level is None or level >= 0.05:
        return text, verdict
    return (text + f"; the matched-accuracy check (level {level:.2f}) is at floor: not evaluable, the final step "
            "alone decides", _rope_verdict([summary_of(path)["twins"]]))


def _rope_runs(path: Path) -> list[dict]:
    """The RoPE variants of a twins run with their context, base and peak wavelength ÷ context."""
    config = json.loads((path / "manifest.json").read_text())["config"]
    waves = summary_of(path).get("wavelength", {})
    d_head = config["d_model"] // config["n_heads"]
    out = []
    for v in config["variants"]:
        if v["mechanism"] != "rope":
            continue
        name = Variant(**v).name
        ratio = (waves.get(name) or {}).get("k")
        if ratio is None or ratio != ratio:
            continue
        ctx, base = v.get("context") or config["context"], v.get("rope_theta") or config["rope_theta"]
        out.append({"name": name, "context": ctx, "base": base, "ratio": float(ratio), "d_head": d_head,
                    "seeded": v.get("seed") is not None, "default": Variant(**v).is_twin and v.get("seed") is None})
    return out


def wavelength_v2(path: Path, model: str) -> tuple[str, str]:
    """O4 v2: a peak beyond the context is what a random pair does most of the time (the base rate), so
    the test is whether the peak moves with the context the way the critical pair k* moves.

    RoPE runs at the config's base and two contexts T1 < T2: k*'s wavelength is the context, so it grows
    by T2 / T1. With m = ln(peak wavelength ratio) / ln(T2 / T1): every peak at or beyond its context and
    m >= 0.5: reproduces; m > 0: partly; otherwise contradicted. One context only: not evaluable.
    """
    runs = _rope_runs(path)
    if not runs:
        return "no RoPE variant wavelengths in the summary", "not evaluable"
    r0 = next((r for r in runs if r["default"]), runs[0])
    freq = r0["base"] ** (-np.arange(0, r0["d_head"], 2) / r0["d_head"])
    base_rate = float((2 * np.pi / freq > r0["context"]).mean())
    text = ("peak pair wavelength ÷ its context: " + ", ".join(f"{r['name']} {r['ratio']:.2f}" for r in runs)
            + f"; base rate (pairs beyond the context at T = {r0['context']}): {base_rate:.0%}")
    same = [r for r in runs if r["base"] == r0["base"] and not r["seeded"]]
    longer = [r for r in same if r["context"] != r0["context"]]
    if not longer:
        return text + "; one training context: whether the peak follows k* is not tested", "not evaluable"
    r1 = max(longer, key=lambda r: r["context"])
    lo, hi = sorted([r0, r1], key=lambda r: r["context"])
    moved = np.log(hi["ratio"] * hi["context"] / (lo["ratio"] * lo["context"])) / np.log(hi["context"] / lo["context"])
    text += (f"; context {lo['context']} → {hi['context']} (k*'s wavelength ×{hi['context'] / lo['context']:g}): "
             f"the peak's wavelength ×{hi['ratio'] * hi['context'] / (lo['ratio'] * lo['context']):.2f}, "
             f"m = {moved:.2f} of the way")
    beyond = min(r["ratio"] for r in same) >= 1
    return text, "reproduces" if beyond and moved >= 0.5 else "partly" if moved > 0 else "contradicted"


def _verdicts(path: Path, key: str) -> dict[str, bool] | None:
    """A cell's per-example verdicts, from the run's own cell store (``None``: not there)."""
    f = path / CELLS / "ablation" / key / CELL_FILE
    return json.loads(f.read_text()).get("data", {}).get("verdicts") if f.is_file() else None


def _paired(path: Path, t: pd.DataFrame, rows: pd.DataFrame) -> list[tuple[np.ndarray, np.ndarray]] | None:
    """Per task row, its baseline's and its own verdicts on the same examples (``None``: not stored)."""
    out = []
    for r in rows.itertuples():
        base = t[(t.model == r.model) & (t.task == r.task) & (t.role == "baseline")]
        b, d = (_verdicts(path, k) for k in (base.key.iloc[0] if len(base) else "", r.key))
        if not b or not d:
            return None
        uids = sorted(set(b) & set(d))
        out.append((np.array([b[u] for u in uids], float), np.array([d[u] for u in uids], float)))
    return out


def parametric_v2(path: Path, model: str) -> tuple[str, str]:
    """P6 v2: the claim as an interaction, the relative drop of contextual tasks minus that of
    parametric tasks (:func:`massmech.stats.paired_bootstrap_interaction`: tasks weighted equally, a
    95% interval resampling tasks, then examples within them, pairs kept together).

    Interval above 0 and parametric tasks lose at most a quarter: reproduces; above 0 but they lose
    more: partly (contextual tasks lose more, parametric ones do not survive); interval holding 0:
    not evaluable (no difference could be told at this n); below 0: contradicted. Evaluable tasks
    of the run's first massive condition; the matched control's interaction is shown beside it.
    """
    t = pd.read_parquet(path / "results.parquet")
    kinds = {k: _evaluable(path, model, k) for k in ("contextual", "parametric")}
    if any(v.empty for v in kinds.values()):
        return "needs evaluable contextual and parametric tasks", "not evaluable"
    cond = kinds["contextual"].condition.iloc[0]
    arms = {"massive": {k: v[v.condition == cond] for k, v in kinds.items()}}
    ctrl = t[(t.model == model) & (t.control == "matched") & t.evaluable.isin([True])]
    first = kinds["contextual"].iloc[0]
    for col in ("rule", "lam", "k", "target", "stage", "granularity", "layer_range"):  # the same grid point
        if col in t:
            ctrl = ctrl[(ctrl[col] == first[col]) | (ctrl[col].isna() & pd.isna(first[col]))]
    if not ctrl.empty:
        arms["control"] = {k: ctrl[ctrl.kind == k] for k in kinds}
    found = {}
    for arm, rows in arms.items():
        pairs = {k: _paired(path, t, v) for k, v in rows.items()}
        if all(pairs.values()):
            found[arm] = paired_bootstrap_interaction(pairs["contextual"], pairs["parametric"], n_boot=2000, seed=0)
    if "massive" not in found:
        return f"per-example verdicts not in {path / CELLS} (the interaction needs them)", "not evaluable"

    def said(r) -> str:
        return (f"relative drop contextual {r.drop_contextual:.0%} ({r.n_tasks_contextual} tasks, n = {r.n_contextual}) "
                f"− parametric {r.drop_parametric:.0%} ({r.n_tasks_parametric} tasks, n = {r.n_parametric}) = "
                f"{r.estimate:+.2f} [{r.ci_low:+.2f}, {r.ci_high:+.2f}]")

    m = found["massive"]
    text = f"`{cond}`, interaction (95% paired bootstrap over tasks and examples): {said(m)}"
    if "control" in found:
        text += f"; variance-matched control: {said(found['control'])}"
    if m.ci_low > 0:
        return text, "reproduces" if m.drop_parametric <= 0.25 else "partly"
    return text, "contradicted" if m.ci_high < 0 else "not evaluable"
