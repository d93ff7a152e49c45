"""Markdown tables of study results: the one rendering the README, the docs and ``massmech report`` share.

>>> import pandas as pd
>>> t = pd.DataFrame([dict(model="m", task="passkey", role="baseline", control=None, evaluable=True, accuracy=0.9,
...                        ci_low=0.8, ci_high=0.95, n=100, removed_variance=0.0, b=0, c=0, p_value=float("nan"),
...                        p_holm=float("nan"), p_vs_matched=float("nan"))])
>>> lines = ablation_markdown(t).splitlines()
>>> print(lines[0]); print(lines[4])
Scored by strict: every answer token is the argmax, teacher-forced (one pass; equal to greedy generation).
| m | passkey | baseline | 0.90 [0.80, 0.95] | 100 | 0.00% | - | - |
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd


def ablation_markdown(table: pd.DataFrame) -> str:
    """One row per (model, task, condition) of a sweep's results table: accuracy [Wilson CI],
    removed variance, the exact McNemar test against the baseline (b / c discordant pairs, p, Holm
    p across the table) and, for massive rows, against the matched control. Bold: a change that
    survives Holm on an evaluable task; rows at chance or floor are marked not evaluable."""
    from massmech.causal.vocabulary import SCORER_HELP

    scorers = sorted(set(table["scorer"])) if "scorer" in table else ["strict"]  # tables before scorers: strict
    said = "; ".join(f"{x}: {SCORER_HELP.get(x, 'the option with the highest log-probability')}" for x in scorers)
    lines = [f"Scored by {said}.", "",
             "| model | task | condition | accuracy [95% CI] | n | removed var. | vs baseline: b / c, p (Holm) "
             "| vs matched control: b / c, p (Holm) |", "|---|---|---|---|---|---|---|---|"]
    for r in table.itertuples():
        what = "baseline" if r.role == "baseline" else r.condition
        task = r.task if r.evaluable else f"{r.task} (not evaluable)"
        test = vs = "-"
        if r.role != "baseline":
            test = f"{r.b} / {r.c}, {r.p_value:.2g}" + (f" ({r.p_holm:.2g})" if r.evaluable else "")
        if r.role == "massive" and r.p_vs_matched == r.p_vs_matched:
            vs = f"{r.b_vs_matched} / {r.c_vs_matched}, {r.p_vs_matched:.2g}" + (
                f" ({r.p_vs_matched_holm:.2g})" if r.evaluable else "")
        bold = "**" if r.role != "baseline" and r.evaluable and r.p_holm < 0.05 else ""
        lines.append(f"| {r.model} | {task} | {what} | {bold}{r.accuracy:.2f}{bold} [{r.ci_low:.2f}, {r.ci_high:.2f}]"
                     f" | {r.n} | {r.removed_variance:.2%} | {test} | {vs} |")
    return "\n".join(lines)


def quant_markdown(table: pd.DataFrame) -> str:
    """One row per quantized variant of a quant study's results table: bits per value, perplexity,
    Q/K massive-set recall, K post-RoPE relative errors (massive / other dims), and each task's
    accuracy [95% CI], bold where the exact McNemar test against the unquantized model survives
    Holm on an evaluable task."""
    from massmech.causal.vocabulary import primary_scorer
    from massmech.studies.quant.study import wide

    w = wide(table)
    acc = primary_scorer(table)
    acc = acc[acc.measure == "accuracy"]
    tasks = list(dict.fromkeys(acc.task))
    head = ["variant", "bits", "ppl", "recall Q pre/post, K pre/post", "K post err. massive / other", *tasks]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def cell(a: pd.DataFrame, t: str) -> str:
        r = a.loc[t]
        bold = "**" if "p_holm" in a and r.get("evaluable") in (True,) and r.p_holm == r.p_holm and r.p_holm < 0.05 else ""
        return f"{bold}{r.value:.2f}{bold} [{r.ci_low:.2f}, {r.ci_high:.2f}]"

    for r in w.itertuples():
        a = acc[acc.variant == r.variant].set_index("task")
        cells = [r.variant, "-" if pd.isna(r.bits_per_value) else f"{r.bits_per_value:.2f}", f"{r.perplexity:.1f}",
                 " / ".join(f"{getattr(r, f'recall_{s}'):.2f}" for s in ("q_pre", "q_post", "k_pre", "k_post")),
                 f"{r.rel_error_massive_k_post:.3f} / {r.rel_error_other_k_post:.3f}",
                 *(cell(a, t) if t in a.index else "-" for t in tasks)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def qk_markdown(table: pd.DataFrame) -> str:
    """The W_q/W_k-only variants of a quant table under every scorer it has, one row per scorer, task
    and part: each method's mean accuracy over the stochastic roundings (min–max, how many) and its
    round-to-nearest value (:func:`massmech.plotting.qk_arms`); ``""`` for a table without them, or
    where they add nothing to :func:`quant_markdown` (one scorer, no stochastic rounding, no part).

    >>> t = pd.DataFrame({"measure": "accuracy", "task": "passkey", "kind": "contextual", "scorer": "strict",
    ...                   "method": "qk-rtn-keep-massive", "sites": "qk", "layers": "all", "draw": [0, 1, 2],
    ...                   "value": [0.5, 0.6, 0.8]})
    >>> print(qk_markdown(t).splitlines()[-1])
    | strict | passkey | Q and K | - | 0.70 (0.60–0.80, 2 draws; nearest 0.50) | - |
    >>> qk_markdown(t[t.draw == 0])  # round to nearest, one scorer: the variants table says it all
    ''
    """
    from massmech.plotting.quant import QK_ARMS, qk_arms

    qk = table[table.method.isin(list(QK_ARMS))] if "method" in table else table.iloc[:0]
    scorers = list(dict.fromkeys(table.scorer.dropna())) if "scorer" in table else []
    if qk.empty or (len(scorers) <= 1 and not (qk.draw >= 1).any() and set(zip(qk.sites, qk.layers, strict=True)) == {("qk", "all")}):
        return ""
    head = ["scorer", "task", "part", *QK_ARMS.values()]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def cell(r: pd.Series | None) -> str:
        if r is None:
            return "-"
        if not r.draws:
            return f"{r['mean']:.2f} (nearest)"
        return f"{r['mean']:.2f} ({r.low:.2f}–{r.high:.2f}, {r.draws} draw{'s' * (r.draws != 1)}; nearest {r.nearest:.2f})"

    for scorer in scorers or [None]:
        arms = qk_arms(table, scorer=scorer)
        for (task, part), d in arms.groupby(["task", "part"], sort=False):
            by = {r.method: r for _, r in d.iterrows()}
            lines.append("| " + " | ".join([scorer or "-", task, part, *(cell(by.get(m)) for m in QK_ARMS)]) + " |")
    return "\n".join(lines)


def frame_markdown(frame: pd.DataFrame, floatfmt: str = ".3g") -> str:
    """Any small table as markdown (no extra dependency).

    >>> print(frame_markdown(pd.DataFrame({"a": [1.23456], "b": ["x"]})))
    | a | b |
    |---|---|
    | 1.23 | x |
    """
    def fmt(v: object) -> str:
        if isinstance(v, float):
            return "-" if v != v else format(v, floatfmt)
        return "-" if v is None else str(v)

    lines = ["| " + " | ".join(map(str, frame.columns)) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


def emergence_lines(summary: dict) -> list[str]:
    """The emergence layer of an ``analyze`` summary in words: the one text the CLI, the results
    pages and the ledger use (:func:`massmech.studies.analyze.emergence_summary`).

    >>> s = {"n_layers": 30, "emergence": {"q": {"layer": 0, "by_factor": {"0.5": 0, "1": 0, "2": 1},
    ...      "minus_v": 0.61, "minus_v_low": 0.4, "minus_v_high": 0.8}, "k": {"layer": None, "by_factor": {"1": None},
    ...      "minus_v": None, "minus_v_low": None, "minus_v_high": None}}}
    >>> print("\\n".join(emergence_lines(s)))
    emergence layer (first layer from which Q/K concentration in the slow band stays above V's; band: wavelength > context; 95% bootstrap interval over chunks):
      Q: layer 0 of 30 (Q - V there 0.61 [0.40, 0.80]); over band factors 0.5, 1, 2: 0, 0, 1
      K: none of 30 (never stays above V); over band factors 1: none
    """
    em = summary.get("emergence")
    if not em:
        return ["emergence layer: not measured (saved activations of one layer)"]
    n = summary.get("n_layers", "?")
    lines = ["emergence layer (first layer from which Q/K concentration in the slow band stays above V's; band: "
             "wavelength > context; 95% bootstrap interval over chunks):"]
    for site in ("q", "k"):
        e = em[site]
        factors = ", ".join(e["by_factor"])
        layers = ", ".join("none" if v is None else str(v) for v in e["by_factor"].values())
        if e["layer"] is None:
            lines.append(f"  {site.upper()}: none of {n} (never stays above V); over band factors {factors}: {layers}")
        else:
            lines.append(f"  {site.upper()}: layer {e['layer']} of {n} ({site.upper()} - V there {e['minus_v']:.2f} "
                         f"[{e['minus_v_low']:.2f}, {e['minus_v_high']:.2f}]); over band factors {factors}: {layers}")
    return lines


def analyze_lines(summary: dict, out: Path | str) -> list[str]:
    """What ``massmech analyze`` prints: the concentration per site and stage, then the emergence layer."""
    lines = [f"{summary['model']}: {summary['n_tokens']} tokens of {summary['corpus']}, context "
             f"{summary['context_len']} -> {Path(out).resolve()}",
             f"  {'':7s} {'massive':>7s} {'low-band energy':>15s} {'low-half energy':>15s} {'massive in low band':>19s}"]
    for key, s in summary["by_stage"].items():
        share = s["massive_low_band_share"]
        lines.append(f"  {key:7s} {s['massive_count']:7d} {s['low_band_energy_fraction']:15.1%} "
                     f"{s['low_half_energy_fraction']:15.1%} {'n/a' if share is None else f'{share:.1%}':>19s}")
    lines += ["  " + line for line in emergence_lines(summary)]
    lines.append("  (V is not rotated: its dims are grouped as Q/K pairs, the control)")
    return lines


def ablation_text(table: pd.DataFrame, out: Path | str, n_asked: int | None = None) -> list[str]:
    """What ``massmech ablation`` prints: the results table with the Holm-corrected tests, after a
    line for each task that has fewer examples than ``n_asked`` (all of them are used)."""
    return [f"ablation -> {out}", *short_tasks(table, n_asked), "", ablation_markdown(table)]


def short_tasks(table: pd.DataFrame, n_asked: int | None) -> list[str]:
    """A line for each task of a sweep table with fewer examples than asked for.

    >>> short_tasks(pd.DataFrame({"task": ["facts", "facts", "passkey"], "n": [4, 4, 100]}), 100)
    ['facts has 4 examples; all are used (asked for 100)']
    """
    if n_asked is None:
        return []
    n = table.groupby("task", sort=False).n.max()
    return [f"{task} has {int(k)} examples; all are used (asked for {n_asked})" for task, k in n.items() if k < n_asked]


def twins_lines(summary: dict, out: Path | str) -> list[str]:
    """What ``massmech twins`` prints: the ratios per twin, final scores, the RoPE twin's disruption."""
    lines = [f"twins ({summary['preset']}, {summary['steps']} steps) -> {out}/analysis",
             "  largest per-head max/mean of M, later half of the layers, final checkpoint:"]
    lines += [f"    {mech:9s} Q {r['q']:.2f}  K {r['k']:.2f}  V {r['v']:.2f}" for mech, r in summary["twins"].items()]
    lines.append("  final scores:")
    lines += [f"    {name:16s} " + "  ".join(f"{k} {v:.3f}" for k, v in sc.items())
              for name, sc in summary["final_scores"].items()]
    lines.append("  disruption of the RoPE twin:")
    lines += [f"    {cond:9s} " + "  ".join(f"{k} {v:.3f}" for k, v in sc.items())
              for cond, sc in summary["disruption"].items()]
    return lines
