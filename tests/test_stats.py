"""Exact paired statistics (issue 14, finding 3): oracle tests against statsmodels and scipy."""

import numpy as np
import pytest
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.proportion import confint_proportions_2indep, proportion_confint

from massmech.stats import (
    bootstrap_ci,
    describe,
    holm,
    mcnemar_exact,
    newcombe_paired_ci,
    wilson_ci,
)


def _pairs(a, b, c, d):
    """Verdicts with a both-right, b right-only-here, c right-only-in-baseline, d both-wrong."""
    here = np.array([1] * a + [1] * b + [0] * c + [0] * d, dtype=float)
    base = np.array([1] * a + [0] * b + [1] * c + [0] * d, dtype=float)
    return here, base


@pytest.mark.parametrize("table", [(3, 0, 4, 2), (10, 7, 2, 11), (0, 0, 0, 5), (20, 1, 9, 3), (1, 12, 0, 0)])
def test_mcnemar_matches_statsmodels(table):
    a, b, c, d = table
    here, base = _pairs(a, b, c, d)
    got_b, got_c, p = mcnemar_exact(here, base)
    assert (got_b, got_c) == (b, c)
    assert p == pytest.approx(mcnemar([[a, b], [c, d]], exact=True).pvalue if b + c else 1.0)


def test_a_four_nil_split_is_not_significant_although_the_bootstrap_says_so():
    here, base = _pairs(6, 0, 4, 0)
    assert bootstrap_ci(here - base)[1] < 0  # the old test: "significant"
    row = describe(here, baseline=base)
    assert (row["b"], row["c"], row["p_value"]) == (0, 4, 0.125)


@pytest.mark.parametrize("k,n", [(0, 10), (7, 20), (20, 20), (1, 3)])
def test_wilson_matches_statsmodels(k, n):
    assert wilson_ci(k, n) == pytest.approx(proportion_confint(k, n, method="wilson"))


def test_newcombe_paired_reduces_to_the_unpaired_hybrid_score_at_zero_correlation():
    a, b, c, d = 4, 2, 6, 3  # ad == bc: phi = 0
    lo, hi = newcombe_paired_ci(*_pairs(a, b, c, d))
    ref = confint_proportions_2indep(a + b, 15, a + c, 15, method="newcomb", compare="diff")
    assert (lo, hi) == pytest.approx(tuple(float(x) for x in ref))


def test_newcombe_paired_covers_the_true_difference():
    rng = np.random.default_rng(0)
    probs = np.array([0.45, 0.15, 0.05, 0.35])  # both, here only, base only, neither: delta = 0.10
    hits = 0
    for _ in range(1000):
        a, b, c, d = rng.multinomial(60, probs)
        lo, hi = newcombe_paired_ci(*_pairs(a, b, c, d))
        hits += lo <= 0.10 <= hi
    assert 0.93 <= hits / 1000 <= 0.985


@pytest.mark.parametrize("ps", [[0.01, 0.04, 0.03, 0.2], [0.5, 0.001], [0.04, 0.04, 0.04], [1.4e-17, 0.5, 3e-9]])
def test_holm_matches_statsmodels(ps):
    """Relative agreement, so a tiny p (57/0 discordant: 1.4e-17) is not printed as 0."""
    assert holm(ps) == pytest.approx(list(multipletests(ps, method="holm")[1]), rel=1e-9, abs=0)
    assert holm([None, *ps])[0] is None


def test_describe_keeps_bootstrap_for_continuous_values():
    row = describe(np.array([0.2, 0.5, 0.9]), baseline=np.array([0.1, 0.4, 1.0]))
    assert row["p_value"] is None and row["b"] is None and row["delta_ci_low"] <= row["delta"] <= row["delta_ci_high"]


def test_rows_at_chance_or_floor_are_not_evaluable():
    """Issue 14, finding 11: sentiment 0.57 on a balanced 2-way task, GSM8K 0.03-0.05, conflict 0.00."""
    from massmech.stats import evaluable

    assert not evaluable(57, 100, 0.5) and not evaluable(5, 100, 0.0) and not evaluable(0, 40, 0.0)
    assert evaluable(73, 100, 1 / 6) and evaluable(41, 100, 0.0)
    assert holm([0.01, None, 0.02]) == [0.02, None, 0.02]  # rows left out do not enter the correction


def test_wilson_bounds_at_zero_and_all_successes_are_exact():
    # 0 of 100 once gave a lower bound of 3.5e-18, a negative error bar and a crashed dose figure
    assert wilson_ci(0, 100)[0] == 0.0 and wilson_ci(100, 100)[1] == 1.0
    from massmech.plotting.style import ci_err

    low, high = ci_err([0.0, 0.5], [1e-18, 0.6], [0.04, 0.7])  # a bootstrap interval above its estimate
    assert (low >= 0).all() and (high >= 0).all() and low[1] == 0
