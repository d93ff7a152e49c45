"""The ledger's version-2 rules (issue 26's audit): decidability and the minimum detectable effect
(P5, O2), the claim as an interaction (P6), V's share (P3), where massive values appear (P4), a check
at floor accuracy (P8), the peak against the base rate (O4). Fixed before the reruns they judge;
version 1 stays in :mod:`massmech.report.rules`, and the ledger shows both.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from massmech.core.critical import beyond_critical
from massmech.errors import AnalysisError
from massmech.infra.cells import CELL_FILE
from massmech.infra.study import CELLS
from massmech.report.rules import (
    ALPHA,
    NOT_EVALUABLE,
    across_heads,
    evaluable_rows,
    low_frequency,
    matched_variance_ratio,
    n_text,
    rope_cause,
    rope_verdict,
    summary_of,
)
from massmech.report.tables import emergence_lines
from massmech.stats import paired_bootstrap_interaction
from massmech.stats.power import decidable, min_detectable_effect
from massmech.studies.ablation import EXAMPLES
from massmech.studies.twins.config import Variant


def qk_not_v_v2(path: Path, model: str, *, stage: str = "pre") -> tuple[str, str]:
    """P3 v2: V's λ-massive dims below 10% of the fewer of Q's and K's: reproduces; below 25%: partly."""
    s = summary_of(path)["by_stage"]
    q, k, v = s[f"q.{stage}"]["massive_count"], s[f"k.{stage}"]["massive_count"], s["v.pre"]["massive_count"]
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

    text = (f"first layer with a λ-massive dim (λ = 5, pre-RoPE): {said(first)} of {n} layers (first quarter: "
            f"< {n / 4:g}); robust concentration layer, "
            + "; ".join(line.strip() for line in emergence_lines(s)[1:]))
    if all(map(early, first.values())):
        return text, "reproduces" if all(map(early, robust.values())) else "partly"
    return text, "partly" if any(map(early, first.values())) else "contradicted"


def _successes(rows: pd.DataFrame, against: str = "matched") -> pd.DataFrame:
    """Each massive row's successes, its baseline's and its control's (``against``: ``matched`` or
    ``kl``), from its own counts.

    ``b``/``c`` against the baseline: disrupted right only / baseline right only; against the
    control: massive right only / control right only. So baseline = massive + c - b and
    control = massive - b_vs_<control> + c_vs_<control>.
    """
    s = (rows.accuracy * rows.n).round().astype(int)
    ctrl = s - rows[f"b_vs_{against}"].astype("Int64") + rows[f"c_vs_{against}"].astype("Int64")
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
    return _contextual(path, pd.read_parquet(path / "results.parquet"), model, "matched")


def contextual_kl(path: Path, model: str) -> tuple[str, str]:
    """O9 and O10: P5 version 2's judge with the control matched in effect (``kl``: the variance-matched
    control scaled to the massive condition's next-token KL on neutral text) instead of in size.
    The text shows each massive condition's KL on the neutral windows against its control's, the
    control's scale, whether the match came within a tenth, and the removed variance and energy of both
    arms on those windows, side by side."""
    t = pd.read_parquet(path / "results.parquet")
    rows = t[(t.model == model) & (t.role == "massive") & t.kl_massive.notna()] if "kl_massive" in t else t[:0]
    if rows.empty:
        return f"no KL-matched control (control kind 'kl') in {path / 'results.parquet'}", "not evaluable"
    r = rows.iloc[0]
    text, verdict = _contextual(path, t, model, "kl")
    return (f"neutral-text KL massive {r.kl_massive:.3g} vs control {r.kl_control:.3g} nats/token (control scale "
            f"{r.kl_scale:.3g}x the matched one, {'within' if r.kl_matched else 'NOT within'} a tenth); removed variance "
            f"{r.neutral_variance_massive:.3g} vs {r.neutral_variance_control:.3g}; removed energy "
            f"{r.removed_energy_massive:.3g} vs {r.removed_energy_control:.3g} (on the neutral text); {text}"), verdict


def _contextual(path: Path, t: pd.DataFrame, model: str, against: str) -> tuple[str, str]:
    """P5 version 2's judge on the run at ``path`` (its results table ``t``) against the ``matched`` or ``kl`` control."""
    ev = evaluable_rows(path, model, "contextual")
    if ev.empty:
        return NOT_EVALUABLE.format(kind="contextual"), "not evaluable"
    ev = _successes(ev, against)
    m_base, m_ctrl = _family(t, "p_holm"), _family(t, f"p_vs_{against}_holm")
    dec_base = [decidable(int(r.s_baseline), int(r.n), alpha=ALPHA, n_tests=m_base) for r in ev.itertuples()]
    dec_ctrl = [r.s_control is not pd.NA and decidable(int(r.s_control), int(r.n), alpha=ALPHA, n_tests=m_ctrl)
                for r in ev.itertuples()]
    ev = ev.assign(dec_base=dec_base, dec_ctrl=dec_ctrl)
    drop = ev[ev.dec_base & (ev.p_holm < 0.05) & (ev.delta < 0)]
    decided = ev[ev.dec_ctrl]
    below = decided[(decided[f"p_vs_{against}_holm"] < 0.05) & (decided[f"c_vs_{against}"] > decided[f"b_vs_{against}"])]
    control = {"matched": "variance-matched", "kl": "KL-matched"}[against]

    def one(r) -> str:
        mde = min_detectable_effect(int(r.n), r.s_baseline / r.n, alpha=ALPHA, n_tests=m_base)
        ratio = matched_variance_ratio(t, model, r.task, r.condition) if against == "matched" else None
        ctrl = (f"control {r.s_control}/{r.n} right, b/c {getattr(r, f'b_vs_{against}')}/{getattr(r, f'c_vs_{against}')}"
                + ("" if ratio is None else f", its removed variance {ratio:.2f}x the massive's")
                + ("" if r.dec_ctrl else ", undecidable"))
        return f"{r.task} {r.delta:+.2f} (MDE {'-' if mde is None else f'{mde:.2f}'}; {ctrl})"

    text = (f"`{ev.condition.iloc[0]}`, {n_text(ev)}, Holm over {m_base} (vs baseline) and {m_ctrl} (vs control): "
            f"{len(drop)} of {len(ev)} evaluable contextual tasks drop vs baseline; {len(below)} of {len(decided)} "
            f"with a decidable control comparison below the {control} control: "
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
            "alone decides", rope_verdict([summary_of(path)["twins"]]))


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
    base_rate = float(beyond_critical(freq, r0["context"]).mean())  # pairs at or beyond k*
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
    """A cell's per-example verdicts: from the run's ``examples.parquet``, else from its own cell
    store (a run made before that table existed); ``None``: in neither."""
    table = path / EXAMPLES
    if table.is_file():
        ex = pd.read_parquet(table, filters=[("key", "==", key)])
        return dict(zip(ex.uid.astype(str), ex.correct.astype(bool), strict=True)) or None
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
    kinds = {k: evaluable_rows(path, model, k) for k in ("contextual", "parametric")}
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
            try:
                found[arm] = paired_bootstrap_interaction(pairs["contextual"], pairs["parametric"], n_boot=2000,
                                                          seed=0)
            except AnalysisError as err:  # e.g. a resample whose baseline is all wrong (few examples)
                found[arm] = err
    if isinstance(found.get("massive"), AnalysisError):
        return f"the interaction cannot be computed: {found['massive']}", "not evaluable"
    found = {arm: r for arm, r in found.items() if not isinstance(r, AnalysisError)}
    if "massive" not in found:
        return (f"per-example verdicts not in {path / EXAMPLES} nor {path / CELLS} (the interaction needs them)",
                "not evaluable")

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


# --------------------------------------------------------------------------- where the weights act
def weights_stage(path: Path) -> str:
    """The pre-RoPE site the projection weights produce: ``raw`` (before QK-norm) where the run
    captured it, else ``pre``."""
    return "raw" if "q.raw" in summary_of(path)["by_stage"] else "pre"


def _at_weights(judge, path: Path, model: str) -> tuple[str, str]:
    """A judge at the site the weights produce; on a QK-norm model, the post-norm site beside it."""
    stage = weights_stage(path)
    text, verdict = judge(path, model, stage=stage)
    if stage == "pre":
        return text, verdict
    after, after_verdict = judge(path, model, stage="pre")
    return (f"before QK-norm (what W_q/W_k produce): {text}; after it (the norm's shared gain applied): {after} "
            f"[{after_verdict} there]", verdict)


def low_frequency_v2(path: Path, model: str) -> tuple[str, str]:
    """P1 v2: version 1 judged at the site the projection weights produce (before QK-norm)."""
    return _at_weights(low_frequency, path, model)


def across_heads_v2(path: Path, model: str) -> tuple[str, str]:
    """P2 v2: version 1 judged before QK-norm, where the norm's gain, shared by every head, cannot
    make the heads agree."""
    return _at_weights(across_heads, path, model)


def qk_not_v_v3(path: Path, model: str) -> tuple[str, str]:
    """P3 v3: version 2 judged before QK-norm (V has no norm: one site)."""
    return _at_weights(qk_not_v_v2, path, model)

