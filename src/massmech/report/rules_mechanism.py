"""The ledger's rules for the mechanism claims (issue 27), each fixed before the run it judges.

P9 was "not testable offline" until the position-shift study (:mod:`massmech.studies.shift`):
moving the same text later changes nothing that RoPE itself computes (a logit depends on ``i - j``
only), so what is measured is how much each band of the model's own Q/K and attention logits
changes when the text sits later, after unrelated text.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from massmech.report.rules import ALPHA, NoData, n_text, sweep_rows
from massmech.stats import holm, mcnemar_exact
from massmech.studies.ablation import EXAMPLES
from massmech.studies.shift.study import CHANGES, SLOW

BAND_LINE = ("high", "mid", "low")


def _shares(slow: pd.DataFrame, measure: str) -> dict[int, tuple[int, int]]:
    """Per shift: (layers where the slowest third changed least, layers)."""
    d = slow[slow.measure == measure]
    return {int(s): (int(g.slow_least.sum()), len(g)) for s, g in d.groupby("shift")}


def position_shift(path: Path, model: str) -> tuple[str, str]:
    """P9 v1: at every shift the slowest third of the RoPE pairs changes least (attention-logit
    contributions among the text's tokens) in >= 2/3 of the layers: reproduces; in <= 1/3 (its
    chance level) at every shift: contradicted; otherwise partly. Q and K before RoPE beside it."""
    if not (path / SLOW).is_file() or not (path / CHANGES).is_file():
        raise NoData(f"no {SLOW} in {path}")
    slow, rel = pd.read_parquet(path / SLOW), pd.read_parquet(path / CHANGES)
    logit = _shares(slow, "logit")
    if not logit:
        raise NoData(f"no attention-logit rows in {path / SLOW}")
    largest = max(logit)
    med = rel[(rel.measure == "logit") & (rel["shift"] == largest)].groupby("band").relative.median()
    parts = [f"{a}/{n} layers at shift {s}" for s, (a, n) in sorted(logit.items())]
    text = ("attention logits: the slowest third changes least in " + ", ".join(parts)
            + f"; median relative change at shift {largest}: "
            + ", ".join(f"{b} {med[b]:.3f}" for b in BAND_LINE if b in med.index))
    for site in ("q", "k"):
        shares = _shares(slow, site)
        if shares:
            text += f"; {site.upper()} before RoPE: " + ", ".join(f"{a}/{n}" for _, (a, n) in sorted(shares.items()))
    fractions = [a / n for a, n in logit.values()]
    if min(fractions) >= 2 / 3:
        return text, "reproduces"
    if max(fractions) <= 1 / 3:
        return text, "contradicted"
    return text, "partly"


def _heads_comparisons(path: Path) -> tuple[str, list[tuple[int, float]]]:
    """The heads run's comparison per task as text, and per evaluable task (sign of the
    interval: 1 above 0, -1 below, 0 holding 0; its half-width)."""
    from massmech.studies.heads.study import COMPARISON

    if not (path / COMPARISON).is_file() or not (path / "results.parquet").is_file():
        raise NoData(f"no {COMPARISON} in {path}")
    comp, res = pd.read_parquet(path / COMPARISON), pd.read_parquet(path / "results.parquet")
    removed = res.assign(arm=res.condition.str.replace(r"-\d+$", "", regex=True)).groupby(["task", "arm"]).removed_variance.mean()
    parts, decided = [], []
    for r in comp.itertuples():
        if isinstance(getattr(r, "error", None), str):
            parts.append(f"{r.task}: not evaluable ({r.error})")
            continue
        text = (f"{r.task}: baseline {r.baseline:.2f}, top heads {r.top:.2f}, other heads {r.others:.2f} "
                f"(n = {r.n}), difference {r.difference:+.2f} [{r.level:.1%}: {r.ci_low:+.2f}, {r.ci_high:+.2f}], "
                f"removed variance {removed.get((r.task, 'top'), float('nan')):.3f} vs "
                f"{removed.get((r.task, 'other'), float('nan')):.3f}")
        if not r.evaluable:
            text += " (not evaluable: baseline at chance or floor)"
        else:
            decided.append((1 if r.ci_low > 0 else -1 if r.ci_high < 0 else 0, (r.ci_high - r.ci_low) / 2))
        parts.append(text)
    return "; ".join(parts), decided


def retrieval_heads(path: Path, model: str) -> tuple[str, str]:
    """O5 v1: on every evaluable retrieval task the control draws' accuracy minus the top heads' has
    its (Bonferroni) bootstrap interval above 0: reproduces; below 0 on some task: contradicted; no
    evaluable task: not evaluable; otherwise partly."""
    text, decided = _heads_comparisons(path)
    signs = [s for s, _ in decided]
    if not signs:
        return text, "not evaluable"
    if -1 in signs:
        return text, "contradicted"
    return text, "reproduces" if all(s == 1 for s in signs) else "partly"


def retrieval_heads_v2(path: Path, model: str) -> tuple[str, str]:
    """O5 v2: as v1, but when every evaluable task's interval holds 0 the verdict is "no difference
    detected", with the largest half-width (the smallest difference those intervals could have
    shown); "partly" is left for some tasks above 0 and the rest holding 0."""
    text, decided = _heads_comparisons(path)
    signs = [s for s, _ in decided]
    if signs and all(s == 0 for s in signs):
        widest = max(w for _, w in decided)
        return f"{text}; a difference within ±{widest:.2f} could not be told from 0", "no difference detected"
    return retrieval_heads(path, model)


def _layer_predictions(massive: pd.DataFrame, pairs: pd.DataFrame, site: str, context: int) -> pd.DataFrame:
    """Per layer of one site (before RoPE): its slowest wavelength (the layer's RoPE), the share of its
    pairs and of its massive dims with a wavelength >= ``context`` (at or beyond k*), and whether the
    pair with the most energy (summed over heads) is beyond."""
    p = pairs[(pairs.site == site) & (pairs.stage == "pre")]
    m = massive[(massive.site == site) & (massive.stage == "pre") & (massive.pair >= 0)]
    rows = []
    for layer, g in p.groupby("layer"):
        wl = g.groupby("pair").wavelength.first()
        energy = g.groupby("pair").energy.sum()
        hits = m[m.layer == layer]
        rows.append({"layer": int(layer), "slowest": float(wl.max()), "base_rate": float((wl >= context).mean()),
                     "n_massive": len(hits), "hits": int((hits.wavelength >= context).sum()),
                     "peak_beyond": bool(wl[energy.idxmax()] >= context)})
    return pd.DataFrame(rows)


def band_prediction(path: Path, model: str, *, version: int = 1) -> tuple[str, str]:
    """O6 (``version`` 1 or 2): the massive dims sit at or beyond Liu et al.'s critical pair k* (wavelength >= the cited
    training context). Per group of layers sharing a RoPE base and per site (Q, K before RoPE), a sign
    test over the layers with massive dims (their share beyond k* above or below their pairs' share),
    Holm across the model's (group, site) family; see the claim's rule for the verdicts."""
    from massmech.core.catalog import TRAIN_CONTEXTS

    if not (path / "massive.parquet").is_file() or not (path / "pairs.parquet").is_file():
        raise NoData(f"no massive.parquet / pairs.parquet in {path}")
    if model not in TRAIN_CONTEXTS:  # e.g. a random-init test model: nothing was trained, nothing to predict
        return f"no cited training context for {model} (massmech.core.catalog.TRAIN_CONTEXTS)", "not evaluable"
    context = TRAIN_CONTEXTS[model][0]
    massive, pairs = pd.read_parquet(path / "massive.parquet"), pd.read_parquet(path / "pairs.parquet")
    tests = []
    for site in ("q", "k"):
        layers = _layer_predictions(massive, pairs, site, context)
        if layers.empty:
            continue
        for slowest, g in layers.groupby(layers.slowest.round(-1), sort=True):
            tests.append(_sign_test(g, "layers", site=site, slowest=slowest))
    if not tests:
        raise NoData(f"no pre-RoPE Q/K rows in {path / 'pairs.parquet'}")
    return _sign_verdict(tests, context, "layers", lambda t: f"layers whose slowest pair turns in {t['slowest']:.3g} tokens",
                         version=version)


def _sign_test(units: pd.DataFrame, unit: str, **keys) -> dict:
    """One O6 sign test over ``units`` (layers or heads; ``n_massive``, ``hits``, ``base_rate`` and
    ``peak_beyond`` each): those with massive dims count up or down by their share beyond k*."""
    from massmech.stats import sign_test

    g = units[units.n_massive > 0]
    rate = g.hits / g.n_massive
    up, down = int((rate > g.base_rate).sum()), int((rate < g.base_rate).sum())
    total = g.n_massive.sum()
    return {**keys, unit: len(g), "up": up, "down": down, "p": sign_test(up, down) if up + down else None,
            "hit": float(g.hits.sum() / total) if total else float("nan"),
            "base": float((g.base_rate * g.n_massive).sum() / total) if total else float("nan"),
            "dims": int(total), "peak": f"{int(g.peak_beyond.sum())}/{len(g)}"}


def _sign_verdict(tests: list[dict], context: int, unit: str, where, *, version: int = 1) -> tuple[str, str]:
    """O6's verdict from its sign tests (one per site and group; ``unit``: what each test counts),
    Holm across them; a test decides when its units can reach Holm's first step (version 2: or
    when Holm finds it significant at a later step)."""
    adjusted = holm([t["p"] for t in tests])
    level = 0.05 / len(tests)  # Holm's first step: a test whose smallest p cannot reach it cannot decide
    parts, signs = [], []
    for t, q in zip(tests, adjusted, strict=True):
        sign = 0 if q is None or q >= 0.05 else (1 if t["up"] > t["down"] else -1)
        decidable = (t["up"] + t["down"] > 0 and 2 * 0.5 ** (t["up"] + t["down"]) <= level) or (version >= 2 and sign != 0)
        if decidable:
            signs.append(sign)
        parts.append(f"{t['site'].upper()}, {where(t)}: {t['dims']} massive dims, {t['hit']:.2f} beyond k* vs "
                     f"{t['base']:.2f} of the pairs; {unit} above/below their base rate {t['up']}/{t['down']} of "
                     f"{t[unit]}" + (f" (Holm p = {q:.2g})" if q is not None else "")
                     + ("" if decidable else f" (not decidable: too few {unit})")
                     + f"; peak pair beyond k* in {t['peak']} {unit}")
    text = f"training context {context} tokens (k*: wavelength >= {context}); " + "; ".join(parts)
    if not signs:
        return text, "not evaluable"
    if -1 in signs:
        return text, "contradicted"
    if all(s == 1 for s in signs):
        ok = all(t["hit"] >= 0.5 for t, q in zip(tests, adjusted, strict=True) if q is not None and q < 0.05)
        return text, "reproduces" if ok else "partly"
    return text, "partly" if 1 in signs else "no difference detected"


def saved_band_prediction(path: Path, model: str, *, version: int = 1) -> tuple[str, str]:
    """O13 (``version`` 1 or 2): O6 on saved tensors of one layer: per site, a sign test over the heads with massive
    dims (their share beyond k* above or below their pairs' share), Holm across the two sites, at
    the training context the run states with its source; see the claim's rule for the verdicts."""
    import json

    if not (path / "massive.parquet").is_file() or not (path / "pairs.parquet").is_file():
        raise NoData(f"no massive.parquet / pairs.parquet in {path}")
    config = json.loads((path / "manifest.json").read_text()).get("config", {})
    context, source = config.get("train_context"), config.get("train_context_source")
    if not context:
        return "the run states no training context (--train-context with its source)", "not evaluable"
    massive, pairs = pd.read_parquet(path / "massive.parquet"), pd.read_parquet(path / "pairs.parquet")
    tests = []
    for site in ("q", "k"):
        p, m = pairs[pairs.site == site], massive[(massive.site == site) & (massive.pair >= 0)]
        rows = []
        for (stage, layer, head), g in p.groupby(["stage", "layer", "head"]):
            hits = m[(m.stage == stage) & (m.layer == layer) & (m["head"] == head)]
            rows.append({"base_rate": float((g.wavelength >= context).mean()), "n_massive": len(hits),
                         "hits": int((hits.wavelength >= context).sum()),
                         "peak_beyond": bool(g.wavelength.loc[g.energy.idxmax()] >= context)})
        heads = pd.DataFrame(rows)
        if len(heads) and (heads.n_massive > 0).any():
            tests.append(_sign_test(heads, "heads", site=site))
    if not tests:
        raise NoData(f"no Q/K rows with massive dims in {path / 'massive.parquet'}")
    text, verdict = _sign_verdict(tests, context, "heads", lambda t: "heads with massive dims", version=version)
    return f"{text} (source: {source})", verdict


def pair_vs_coordinate_table(path: Path, model: str) -> pd.DataFrame:
    """Per evaluable contextual task and k: the whole-pair massive arm against the coordinate arm on
    the same examples (exact McNemar; ``b``: pair right, coordinate wrong), Holm across them, and each
    arm's accuracy and its test against its own KL-matched control (the sweep's ``p_vs_kl_holm``)."""
    t = sweep_rows(path, model, "contextual")
    arms = t[(t.role == "massive") & t.evaluable.isin([True]) & t.granularity.isin(["dim", "pair"])]
    examples = pd.read_parquet(path / EXAMPLES)
    examples = examples[examples.model == model]
    rows = []
    for (task, k), g in arms.groupby(["task", "k"]):
        by = g.set_index("granularity")
        if not {"dim", "pair"} <= set(by.index):
            continue
        ex = examples[examples.task == task].pivot(index="uid", columns="condition", values="correct")
        up, down, p = mcnemar_exact(ex[by.condition["pair"]].to_numpy(float), ex[by.condition["dim"]].to_numpy(float))
        rows.append({"task": task, "k": int(k), "n": len(ex), "pair": by.accuracy["pair"], "dim": by.accuracy["dim"],
                     "b": up, "c": down, "p_value": p, "pair_vs_kl": by.p_vs_kl_holm["pair"],
                     "pair_below_kl": bool(by.c_vs_kl["pair"] > by.b_vs_kl["pair"]),
                     "dim_vs_kl": by.p_vs_kl_holm["dim"], "kl_pair": by.kl_massive["pair"], "kl_dim": by.kl_massive["dim"]})
    out = pd.DataFrame(rows)
    if len(out):
        out["p_holm"] = holm(out.p_value.tolist())
    return out


def pair_vs_coordinate(path: Path, model: str) -> tuple[str, str]:
    """O12 v1 (see its rule in the ledger)."""
    if not (path / EXAMPLES).exists():
        return f"per-example verdicts not in {path / EXAMPLES} (the paired test needs them)", "not evaluable"
    t = pair_vs_coordinate_table(path, model)
    if t.empty:
        return "no evaluable contextual task with both a coordinate and a whole-pair arm", "not evaluable"
    parts = [f"{r['task']} top-{r['k']}: pair {r['pair']:.2f} vs coordinate {r['dim']:.2f} (b/c {r['b']}/{r['c']}, "
             f"Holm p {r['p_holm']:.2g}; neutral-text KL {r['kl_pair']:.3f} vs {r['kl_dim']:.3f}; pair vs its KL-matched "
             f"control Holm p {r['pair_vs_kl']:.2g}{', below it' if r['pair_below_kl'] else ''})"
             for r in t.to_dict("records")]
    text = f"exact McNemar, Holm across these {len(t)} ({n_text(t)}): " + "; ".join(parts)
    sig = t.p_holm < ALPHA
    below, above = sig & (t.c > t.b), sig & (t.b > t.c)
    beyond = below & (t.pair_vs_kl < ALPHA) & t.pair_below_kl
    if below.any() and above.any():
        verdict = "partly"
    elif below.any():
        verdict = "reproduces" if beyond.any() else "partly"
    else:
        verdict = "contradicted" if above.any() else "no difference detected"
    return text, verdict
