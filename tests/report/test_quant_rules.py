"""O11: keep-massive vs keep-random over paired stochastic draws, one example one unit."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from massmech.report.rules_quant import KEEP_MASSIVE, KEEP_RANDOM, PLAIN, qk_draws
from massmech.studies.quant.config import QuantSpec

N, DRAWS = 40, 4


def _run(tmp_path, p_massive: dict[str, float], p_random: dict[str, float], *, evaluable=True, draws=DRAWS):
    """A quant run folder by hand: per task, keep-massive right with p_massive, keep-random with p_random."""
    rng = np.random.default_rng(0)
    res, ex = [], []
    for task in p_massive:
        res.append({"measure": "accuracy", "variant": "none", "method": "none", "sites": "qk", "layers": "all",
                    "draw": 0, "task": task, "kind": "contextual", "evaluable": evaluable})
        for d in range(1, draws + 1):
            for method, p in ((KEEP_MASSIVE, p_massive[task]), (KEEP_RANDOM, p_random[task]), (PLAIN, 0.1)):
                label = QuantSpec(method, 4, None, draw=d).label
                res.append({"measure": "accuracy", "variant": label, "method": method, "sites": "qk", "layers": "all",
                            "draw": d, "task": task, "kind": "contextual", "evaluable": evaluable})
                ex += [{"variant": label, "task": task, "uid": u, "correct": bool(rng.random() < p)} for u in range(N)]
    pd.DataFrame(res).to_parquet(tmp_path / "results.parquet")
    pd.DataFrame(ex).to_parquet(tmp_path / "examples.parquet")
    return tmp_path


@pytest.mark.parametrize(("massive", "random", "verdict"), [
    ({"passkey": 0.9, "kv_lookup": 0.8}, {"passkey": 0.2, "kv_lookup": 0.1}, "reproduces"),
    ({"passkey": 0.9, "kv_lookup": 0.5}, {"passkey": 0.2, "kv_lookup": 0.5}, "partly"),
    ({"passkey": 0.1, "kv_lookup": 0.5}, {"passkey": 0.9, "kv_lookup": 0.5}, "contradicted"),
    ({"passkey": 0.5, "kv_lookup": 0.5}, {"passkey": 0.5, "kv_lookup": 0.5}, "no difference detected"),
])
def test_verdicts_follow_the_paired_draws(tmp_path, massive, random, verdict):
    text, got = qk_draws(_run(tmp_path, massive, random), "m")
    assert got == verdict and f"{DRAWS} stochastic roundings" in text and f"n = {N}" in text


def test_one_draw_is_not_a_result(tmp_path):
    text, verdict = qk_draws(_run(tmp_path, {"passkey": 0.9}, {"passkey": 0.1}, draws=1), "m")
    assert verdict == "not evaluable" and "paired stochastic draws" in text


def test_nothing_evaluable_or_no_examples_is_not_evaluable(tmp_path):
    run = _run(tmp_path, {"passkey": 0.9}, {"passkey": 0.1}, evaluable=False)
    assert qk_draws(run, "m")[1] == "not evaluable"
    (tmp_path / "examples.parquet").unlink()
    assert "per-example verdicts not in" in qk_draws(run, "m")[0]


def _pairs_run(tmp_path, aware: float, blind: float, *, kind="contextual"):
    """A quant run by hand holding every head-to-head pair: aware arms right with p ``aware``."""
    from massmech.report.rules_quant import PAIRS

    rng = np.random.default_rng(1)
    res = [{"measure": "accuracy", "variant": "none", "task": "passkey", "kind": kind, "evaluable": True}]
    ex = []
    for pair in PAIRS:
        for spec, p in zip(pair, (aware, blind), strict=True):
            ex += [{"variant": spec.label, "task": "passkey", "uid": u, "correct": bool(rng.random() < p)}
                   for u in range(N)]
    pd.DataFrame(res).to_parquet(tmp_path / "results.parquet")
    pd.DataFrame(ex).drop_duplicates(["variant", "uid"]).to_parquet(tmp_path / "examples.parquet")
    return tmp_path


@pytest.mark.parametrize(("aware", "blind", "verdict"), [
    (0.9, 0.1, "reproduces"), (0.1, 0.9, "contradicted"), (0.5, 0.5, "no difference detected")])
def test_p7_head_to_head_at_equal_bits(tmp_path, aware, blind, verdict):
    from massmech.report.rules_quant import head_to_head

    text, got = head_to_head(_pairs_run(tmp_path, aware, blind), "m")
    assert got == verdict and "awq-w4-g64 vs rtn-w4-g64 / passkey" in text
    assert "kv-massive-aware-2b vs kv-per-token-2b" in text and "Holm across these 6" in text


def test_p7_head_to_head_needs_a_contextual_task(tmp_path):
    from massmech.report.rules_quant import head_to_head

    assert head_to_head(_pairs_run(tmp_path, 0.9, 0.1, kind="parametric"), "m")[1] == "not evaluable"
