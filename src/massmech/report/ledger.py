"""The claim ledger: every claim of the paper, and ours, with the run that tests it and a verdict.

Each :class:`Claim` names its source, the command that makes its run folder, and a rule that
reads that folder and returns, per model, what was measured and a verdict:

* **reproduces**: the measurement meets the claim's rule (stated with the claim);
* **partly**: it holds in part (stated how);
* **contradicted**: the measurement goes against it;
* **not evaluable**: the run exists but cannot decide (tasks at chance or floor, nothing moves);
* **not run**: the run folder is missing; the command makes it;
* **not testable offline**: what is needed (e.g. a pretrained non-RoPE model) is not available.

The rules are fixed here, before looking at any number; :func:`ledger_markdown` renders the page
``docs/ledger.md`` from the run folders, so rerunning the studies regenerates it.
Source of the paper's claims: the abstract of Jin et al., ICML 2025 (arXiv 2502.01563), as quoted
in the README of the official code (github.com/MingyuJ666/Rope_with_LLM).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from massmech.report.pages import GENERATED
from massmech.report.runs import MODELS, command, models_of, run_folder
from massmech.report.tables import emergence_lines
from massmech.stats import holm
from massmech.studies.quant.config import QK_METHODS


@dataclasses.dataclass(frozen=True)
class Finding:
    """One model's measurement of one claim."""

    model: str
    measured: str
    verdict: str
    run: str


@dataclasses.dataclass(frozen=True)
class Claim:
    """A claim, where it comes from, how it is tested, and the rule deciding the verdict."""

    key: str
    claim: str
    source: str
    rule: str
    run: str  # a key of massmech.report.runs.RUNS
    judge: Callable[[Path, str], tuple[str, str]]  # (run folder, model) -> (measured, verdict)
    ours: bool = False

    def findings(self, root: Path, models: tuple[str, ...] = MODELS) -> list[Finding]:
        """One finding per model (the twins: one for the toy twins)."""
        out = []
        for model in models_of(self.run, models):
            folder, cmd = run_folder(self.run, model), command(self.run, model, str(root))
            path = root / folder
            if not (path / "manifest.json").is_file() or not run_finished(path):
                out.append(Finding(model, f"`{cmd}`", "not run", folder))
                continue
            try:
                measured, verdict = self.judge(path, model)
            except _NoData as why:
                measured, verdict = f"{why}; `{cmd}`", "not run"
            out.append(Finding(model, measured, verdict, folder))
        return out


class _NoData(Exception):
    """The run folder exists but holds nothing for this model."""


def run_finished(path: Path) -> bool:
    """Whether a run folder holds its results (a study still running has only its manifest).

    >>> run_finished(Path("no/such/run"))
    False
    """
    return any((path / f).is_file() for f in ("summary.json", "analysis/summary.json", "results.parquet"))


def _summary(path: Path) -> dict:
    f = path / "summary.json" if (path / "summary.json").is_file() else path / "analysis" / "summary.json"
    return json.loads(f.read_text())


# --------------------------------------------------------------------------- rules
def _low_frequency(path: Path, model: str) -> tuple[str, str]:
    s = _summary(path)["by_stage"]
    q, k = s["q.pre"]["massive_low_band_share"], s["k.pre"]["massive_low_band_share"]
    eq, ek = s["q.pre"]["low_band_energy_fraction"], s["k.pre"]["low_band_energy_fraction"]
    if q is None or k is None:
        return "no λ-massive dim in Q or K (nothing to locate)", "not evaluable"
    text = (f"massive dims in the low band: Q {q:.0%}, K {k:.0%}; low-band energy Q {eq:.0%}, K {ek:.0%} "
            f"(λ=5, pre-RoPE)")
    verdict = "reproduces" if min(q, k) >= 0.9 else "partly" if min(q, k) >= 0.5 else "contradicted"
    return text, verdict


def _across_heads(path: Path, model: str) -> tuple[str, str]:
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


def _qk_not_v(path: Path, model: str) -> tuple[str, str]:
    s = _summary(path)["by_stage"]
    q, k, v = s["q.pre"]["massive_count"], s["k.pre"]["massive_count"], s["v.pre"]["massive_count"]
    if min(q, k) == 0:
        return f"λ-massive dims: Q {q}, K {k}, V {v} (none in Q or K to compare V with)", "not evaluable"
    verdict = "reproduces" if v == 0 and min(q, k) > 0 else "partly" if v < 0.1 * min(q, k) else "contradicted"
    return f"λ-massive dims: Q {q}, K {k}, V {v}", verdict


def _early(path: Path, model: str) -> tuple[str, str]:
    s = _summary(path)
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


def _sweep_rows(path: Path, model: str, kind: str) -> pd.DataFrame:
    t = pd.read_parquet(path / "results.parquet")
    t = t[(t.model == model) & (t.kind == kind)]
    if t.empty:
        raise _NoData(f"no {kind} rows for {model} in {path}")
    return t


def _n(rows: pd.DataFrame) -> str:
    lo, hi = int(rows.n.min()), int(rows.n.max())
    return f"n = {lo}" if lo == hi else f"n = {lo}–{hi}"


def _contextual(path: Path, model: str) -> tuple[str, str]:
    t = _sweep_rows(path, model, "contextual")
    ev = t[(t.role == "massive") & t.evaluable]
    if ev.empty:
        return "no contextual task is evaluable (baselines at chance or floor)", "not evaluable"
    drop = ev[(ev.p_holm < 0.05) & (ev.delta < 0)]
    vs = ev[(ev.p_vs_matched_holm < 0.05) & (ev.c_vs_matched > ev.b_vs_matched)]
    deltas = ", ".join(f"{r.task} {r.delta:+.2f}" for r in ev.itertuples())
    text = (f"`{ev.condition.iloc[0]}`, {_n(ev)}: "
            f"{len(drop)} of {len(ev)} evaluable contextual tasks drop vs baseline (exact McNemar, Holm): {deltas}; "
            f"{len(vs)} of {len(ev)} also below the variance-matched control")
    verdict = ("reproduces" if len(drop) == len(ev) and len(vs) == len(ev)
               else "partly" if len(drop) else "contradicted")
    return text, verdict


def _parametric(path: Path, model: str) -> tuple[str, str]:
    t = _sweep_rows(path, model, "parametric")
    ev = t[(t.role == "massive") & t.evaluable]
    if ev.empty:
        return "no parametric task is evaluable (baselines at chance or floor)", "not evaluable"
    drop = ev[(ev.p_holm < 0.05) & (ev.delta < 0)]
    deltas = ", ".join(f"{r.task} {r.delta:+.2f}" for r in ev.itertuples())
    text = (f"`{ev.condition.iloc[0]}`, {_n(ev)}: "
            f"{len(drop)} of {len(ev)} evaluable parametric tasks drop vs baseline (Holm): {deltas}")
    verdict = "reproduces" if not len(drop) else "partly" if len(drop) < len(ev) else "contradicted"
    return text, verdict


def _matched(path: Path, model: str) -> tuple[str, str]:
    t = pd.read_parquet(path / "results.parquet")
    if not (t.model == model).any():
        raise _NoData(f"no rows for {model} in {path}")
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


def _quant_protect(path: Path, model: str, *, qk_arm: bool = False) -> tuple[str, str]:
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
            f"({_n(ev)}, exact McNemar, Holm across these {len(ev)})"
            + (": " + ", ".join(f"{r.variant}/{r.task}" for r in hurt.itertuples()) if len(hurt) else ""))
    if hurt.empty:
        return text + "; no quantizer moves contextual accuracy at this n", "not evaluable"
    protects = hurt.outlier_aware.astype(bool)
    verdict = "reproduces" if not protects.any() else "partly" if (~protects).any() else "contradicted"
    return text, verdict


def _qk_arm(path: Path, model: str) -> tuple[str, str]:
    text, verdict = _quant_protect(path, model, qk_arm=True)
    return "W_q/W_k only, 4 bits, massive rows kept vs random rows kept vs none: " + text, verdict


def _rope_cause(path: Path, model: str) -> tuple[str, str]:
    summary = _summary(path)
    tw = summary["twins"]

    def holds(r: dict, factor: float) -> bool:  # RoPE's weaker of Q/K above every other twin's stronger
        rope = min(r["rope"]["q"], r["rope"]["k"])
        return all(rope > factor * max(v["q"], v["k"]) for m, v in r.items() if m != "rope" and isinstance(v, dict))

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
    verdict = ("reproduces" if all(holds(r, 1.5) for r in checks)
               else "partly" if all(holds(r, 1.0) for r in checks) else "contradicted")
    return text, verdict


def _wavelength(path: Path, model: str) -> tuple[str, str]:
    w = _summary(path).get("wavelength", {})
    vals = [v for r in w.values() for v in r.values() if v == v]
    if not vals:
        return "no RoPE variant wavelengths in the summary", "not evaluable"
    return (f"peak pair wavelength ÷ training context, RoPE variants: {min(vals):.2f}–{max(vals):.2f} "
            "(inside the low band: longer than the context)", "reproduces" if min(vals) >= 1 else "partly")


PAPER = "Jin et al. 2025, abstract"
CLAIMS: tuple[Claim, ...] = (
    Claim("P1", "Massive values are concentrated in low-frequency dimensions", PAPER,
          "≥ 90% of Q and K λ-massive dims in the low band (wavelength beyond the context): reproduces; ≥ 50%: partly",
          "analyze", _low_frequency),
    Claim("P2", "... across different attention heads", PAPER,
          "heads with massive dims share their layer's most common pair: ≥ 50% reproduces, ≥ 25% partly",
          "analyze", _across_heads),
    Claim("P3", "... exclusively in Q and K, absent in V", PAPER,
          "V has no λ-massive dim: reproduces; fewer than 10% of Q's or K's: partly", "analyze", _qk_not_v),
    Claim("P4", "Massive values appear from the early layers on", "Jin et al. 2025, Sec. 3 (concentration by layer)",
          "robust emergence layer (massmech.core.emergence, band factor 1) in the first quarter of the layers for "
          "Q and K: reproduces; one of them: partly", "analyze", _early),
    Claim("P5", "Disrupting massive values wrecks contextual knowledge understanding", PAPER,
          "every evaluable contextual task drops vs baseline and vs the variance-matched control (Holm): reproduces; "
          "some drop: partly", "main", _contextual),
    Claim("P6", "... while retrieval of parametric knowledge mostly survives", PAPER,
          "no evaluable parametric task drops vs baseline (Holm): reproduces; some: partly; all: contradicted",
          "main", _parametric),
    Claim("P7", "Quantizers failing to protect massive values degrade contextual knowledge more", PAPER,
          "only quantizers that do not protect outliers hurt contextual tasks (Holm): reproduces",
          "quant", _quant_protect),
    Claim("P8", "Massive values are induced by RoPE", PAPER,
          "RoPE twin's Q/K max/mean > 1.5× every non-RoPE twin's, at the final step and at matched in-context "
          "accuracy: reproduces; larger: partly", "twins", _rope_cause),
    Claim("O1", "Size matters: massive dims vs random dims removing the same token variance", "massmech (issue 14)",
          "massive below its variance-matched control on every evaluable task: reproduces", "main", _matched, ours=True),
    Claim("O2", "The paper's protocol (post-RoPE, the official top-k and replacement per family, prompt only) on "
          "contextual tasks; Gemma-3 has no official setting: Gemma-2's (k = 22, zero) as a named variant",
          "official code, modeling_llama.py (`if q_len != 1`)", "as P5", "paper", _contextual, ours=True),
    Claim("O3", "Quantizing only W_q/W_k: keeping the massive rows in full precision protects contextual tasks",
          "massmech (issue 14)", "as P7, on the Q/K-only arm", "quant", _qk_arm, ours=True),
    Claim("O4", "The twins' peak Q/K pair has a wavelength longer than the training context", "massmech twins",
          "every RoPE variant's peak wavelength ≥ its context", "twins", _wavelength, ours=True),
)
NOT_TESTABLE = (
    ("P9", "The values of low-frequency dimensions are less affected by position information", PAPER,
     "definitional for RoPE (a pair whose wavelength exceeds the context turns less than once); no measurement "
     "beyond the band tables of `massmech analyze` adds to it"),
    ("P10", "Pretrained models without RoPE show no such concentration", "Jin et al. 2025 (RoPE vs non-RoPE models)",
     "no pretrained non-RoPE model is available offline; the twins (P8) test it on toy models"),
)


def ledger(root: str | os.PathLike = "runs", models: tuple[str, ...] = MODELS) -> pd.DataFrame:
    """Every claim × model: measured, verdict, run folder (a tidy table)."""
    root = Path(root)
    rows = []
    for c in CLAIMS:
        for f in c.findings(root, models):
            rows.append({"key": c.key, "claim": c.claim, "source": c.source, "ours": c.ours, "rule": c.rule,
                         **dataclasses.asdict(f)})
    for key, claim, source, why in NOT_TESTABLE:
        rows.append({"key": key, "claim": claim, "source": source, "ours": False, "rule": "-", "model": "-",
                     "measured": why, "verdict": "not testable offline", "run": "-"})
    return pd.DataFrame(rows)


def ledger_markdown(root: str | os.PathLike = "runs", models: tuple[str, ...] = MODELS) -> str:
    """The ledger page (``docs/ledger.md``), generated from the run folders under ``root``."""
    t = ledger(root, models)
    lines = [GENERATED, "# Claim ledger", "",
             "Every claim of the paper (Jin et al., ICML 2025; the abstract's claims as quoted in the official "
             "code's README) and of massmech, the run that tests it, what was measured and a verdict by the "
             "rule stated with the claim (fixed before the numbers). Regenerate with "
             "`massmech report --ledger runs --out docs/ledger.md`.", ""]
    for part, ours in (("The paper's claims", False), ("massmech's own findings", True)):
        lines += [f"## {part}", "", "| # | claim | model | measured | verdict | rule |", "|---|---|---|---|---|---|"]
        for r in t[t.ours == ours].itertuples():
            lines.append(f"| {r.key} | {r.claim} | {r.model} | {r.measured} | **{r.verdict}** | {r.rule} |")
        lines.append("")
    counts = t.verdict.value_counts()
    lines += ["Verdicts: " + ", ".join(f"{v} {n}" for v, n in counts.items()) + "."]
    return "\n".join(lines) + "\n"
