"""The retrieval-heads study: arms, the comparison, a run folder, and the ledger's O5 judge."""

import json

import numpy as np
import pandas as pd
import pytest

from massmech.causal.retrieval import rank_heads
from massmech.causal.tasks.builtin import get_task
from massmech.errors import AnalysisError, ConfigError
from massmech.report.rules import NoData
from massmech.report.rules_mechanism import retrieval_heads, retrieval_heads_v2
from massmech.studies.heads.config import HeadsConfig
from massmech.studies.heads.study import COMPARISON, RANKING, compare, head_arms, run_heads

CFG = HeadsConfig(model="tiny-llama", tasks=("passkey",), n=6, n_rank=3, top=2, draws=2, lam=1.2)


def test_rank_heads_ranks_the_eligible_heads_by_their_massive_needle_advantage(tiny_models):
    r = rank_heads(tiny_models["tiny-llama"], get_task("passkey"), n=3, lam=1.2)
    eligible = r[r.eligible]
    assert len(eligible) >= 2 and (r[~r.eligible]["rank"] == 0).all()
    assert sorted(eligible["rank"]) == list(range(1, len(eligible) + 1))
    assert eligible.sort_values("rank").score.is_monotonic_decreasing
    assert ((r.q_massive >= 0) & (r.q_massive <= 1)).all()


def test_arms_are_the_top_heads_and_seeded_draws_of_the_others():
    r = pd.DataFrame(dict(layer=np.repeat([0, 1, 2], 4), head=np.tile(range(4), 3), eligible=[True] * 10 + [False] * 2,
                          rank=[*range(1, 11), 0, 0]))
    arms = head_arms(r, 3, 4, seed=7)
    assert arms["top"] == [(0, 0), (0, 1), (0, 2)] and len(arms) == 5
    others = {u for k, v in arms.items() if k != "top" for u in v}
    assert not others & set(arms["top"]) and not others & {(2, 2), (2, 3)}  # never a top or ineligible head
    assert head_arms(r, 3, 4, seed=7) == arms and head_arms(r, 3, 4, seed=8) != arms
    with pytest.raises(AnalysisError, match="lower top"):
        head_arms(r, 6, 1, seed=0)


def test_compare_pairs_the_examples():
    rng = np.random.default_rng(0)
    base, top, o0, o1 = (rng.random(40) < p for p in (0.9, 0.3, 0.8, 0.7))
    ex = pd.DataFrame([dict(condition=c, uid=i, correct=bool(v[i])) for i in range(40)
                       for c, v in (("baseline", base), ("top", top), ("other-0", o0), ("other-1", o1))])
    c = compare(ex, 0.0, 0.025)
    assert c["difference"] == pytest.approx((o0.mean() + o1.mean()) / 2 - top.mean())
    assert c["ci_low"] < c["difference"] < c["ci_high"] and c["level"] == 0.975
    b, d = c["top_vs_baseline_discordant"]
    assert b + d == int((top != base).sum()) and c["evaluable"]


def test_a_run_writes_its_tables_and_figures_and_resumes(tmp_path, tiny_models):
    model = tiny_models["tiny-llama"]
    table = run_heads(CFG, tmp_path / "run", model=model, progress=False)
    assert list(table.condition) == ["baseline", "top", "other-0", "other-1"]
    assert table.set_index("condition").n_dims["baseline"] == 0 and (table.n_dims[1:] > 0).all()
    ranking = pd.read_parquet(tmp_path / "run" / RANKING)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    top = {tuple(u) for u in summary["arms"]["passkey"]["top"]}
    assert top == {(r.layer, r.head) for r in ranking[ranking.role == "top"].itertuples()}
    assert (tmp_path / "run" / "figures" / "heads_passkey.png").is_file()
    pd.testing.assert_frame_equal(run_heads(CFG, tmp_path / "run", model=model, progress=False), table)
    with pytest.raises(ConfigError, match="ranked on the examples"):
        HeadsConfig(seed=1, rank_seed=1)


def _write(path, rows):
    path.mkdir()
    pd.DataFrame([dict(task=t, n=200, baseline=0.9, top=0.5, others=0.8, difference=d, ci_low=lo, ci_high=hi,
                       level=0.975, evaluable=e) for t, d, lo, hi, e in rows]).to_parquet(path / COMPARISON)
    pd.DataFrame([dict(task=t, condition=c, removed_variance=0.1) for t, *_ in rows
                  for c in ("baseline", "top", "other-0")]).to_parquet(path / "results.parquet")


@pytest.mark.parametrize("rows,verdict", [
    ([("passkey", 0.3, 0.2, 0.4, True), ("kv_lookup", 0.1, 0.05, 0.2, True)], "reproduces"),
    ([("passkey", 0.3, 0.2, 0.4, True), ("kv_lookup", 0.0, -0.1, 0.1, True)], "partly"),
    ([("passkey", 0.3, 0.2, 0.4, True), ("kv_lookup", -0.2, -0.3, -0.1, True)], "contradicted"),
    ([("passkey", 0.3, 0.2, 0.4, False)], "not evaluable"),
])
def test_the_o5_judge_applies_its_rule(tmp_path, rows, verdict):
    _write(tmp_path / "run", rows)
    measured, got = retrieval_heads(tmp_path / "run", "m")
    assert got == verdict and "passkey: baseline 0.90, top heads 0.50" in measured
    with pytest.raises(NoData):
        retrieval_heads(tmp_path / "nothing", "m")


@pytest.mark.parametrize("rows,v1,v2", [
    ([("passkey", 0.0, -0.02, 0.02, True), ("kv_lookup", 0.0, -0.05, 0.03, True)], "partly", "no difference detected"),
    ([("passkey", 0.3, 0.2, 0.4, True), ("kv_lookup", 0.0, -0.1, 0.1, True)], "partly", "partly"),
    ([("passkey", 0.0, -0.02, 0.02, True), ("kv_lookup", -0.2, -0.3, -0.1, True)], "contradicted", "contradicted"),
    ([("passkey", 0.0, -0.02, 0.02, False)], "not evaluable", "not evaluable"),
])
def test_o5_v2_names_a_null_no_difference_detected(tmp_path, rows, v1, v2):
    _write(tmp_path / "run", rows)
    assert retrieval_heads(tmp_path / "run", "m")[1] == v1
    measured, got = retrieval_heads_v2(tmp_path / "run", "m")
    assert got == v2
    if v2 == "no difference detected":
        assert measured.endswith("a difference within ±0.04 could not be told from 0")  # the wider half-width


def test_too_few_eligible_heads_is_a_recorded_finding_not_a_crash(tmp_path, tiny_models):
    cfg = HeadsConfig(model="tiny-llama", tasks=("passkey",), n=4, n_rank=2, top=5, draws=1, lam=1.2)  # 8 heads < 2 x 5
    table = run_heads(cfg, tmp_path / "run", model=tiny_models["tiny-llama"], progress=False)
    assert table.empty
    comp = pd.read_parquet(tmp_path / "run" / COMPARISON)
    assert "lower top" in comp.error[0] and not comp.evaluable[0]
    measured, verdict = retrieval_heads(tmp_path / "run", "tiny-llama")
    assert verdict == "not evaluable" and "lower top" in measured
