"""AUROC, its DeLong interval and DeLong's paired test (issue 26): loops by hand and sklearn."""

import numpy as np
import pytest
from scipy.stats import norm

from massmech.errors import AnalysisError
from massmech.stats import auroc, auroc_ci, delong_paired_test


def _psi(x, y):
    return 1.0 if x > y else 0.5 if x == y else 0.0


def _placements_by_hand(pos, neg):
    v10 = [sum(_psi(x, y) for y in neg) / len(neg) for x in pos]
    v01 = [sum(_psi(x, y) for x in pos) / len(pos) for y in neg]
    return v10, v01


def _cov(u, v):
    mu, mv = sum(u) / len(u), sum(v) / len(v)
    return sum((a - mu) * (b - mv) for a, b in zip(u, v, strict=True)) / (len(u) - 1)


def _scores(seed, m=25, n=30, decimals=1):
    rng = np.random.default_rng(seed)
    return np.round(rng.normal(0.6, 1, m), decimals), np.round(rng.normal(0, 1, n), decimals)  # ties included


@pytest.mark.parametrize("seed", range(4))
def test_auroc_matches_the_pair_count_and_sklearn(seed):
    pos, neg = _scores(seed)
    by_pairs = sum(_psi(x, y) for x in pos for y in neg) / (pos.size * neg.size)
    assert auroc(pos, neg) == pytest.approx(by_pairs, abs=1e-12)
    metrics = pytest.importorskip("sklearn.metrics")
    labels = np.r_[np.ones(pos.size), np.zeros(neg.size)]
    assert auroc(pos, neg) == pytest.approx(metrics.roc_auc_score(labels, np.r_[pos, neg]), abs=1e-12)


def test_auroc_ci_is_delong_by_hand():
    pos, neg = [0.9, 0.7, 0.4, 0.8, 0.5], [0.5, 0.3, 0.6, 0.1]
    v10, v01 = _placements_by_hand(pos, neg)
    auc = sum(v10) / len(v10)
    se = (_cov(v10, v10) / len(pos) + _cov(v01, v01) / len(neg)) ** 0.5
    z = norm.ppf(0.975)
    assert auroc_ci(pos, neg) == pytest.approx((max(0.0, auc - z * se), min(1.0, auc + z * se)), abs=1e-12)
    assert auroc_ci(pos, neg)[0] > 0.0  # a case the clipping does not hide


@pytest.mark.parametrize("seed", range(3))
def test_delong_paired_test_is_the_covariance_by_hand(seed):
    pos_a, neg_a = _scores(seed, m=12, n=9)
    rng = np.random.default_rng(100 + seed)
    pos_b, neg_b = pos_a + rng.normal(0, 0.8, pos_a.size), neg_a + rng.normal(0, 0.8, neg_a.size)  # correlated
    a10, a01 = _placements_by_hand(pos_a, neg_a)
    b10, b01 = _placements_by_hand(pos_b, neg_b)
    var = ((_cov(a10, a10) + _cov(b10, b10) - 2 * _cov(a10, b10)) / len(pos_a)
           + (_cov(a01, a01) + _cov(b01, b01) - 2 * _cov(a01, b01)) / len(neg_a))
    auc_a, auc_b = sum(a10) / len(a10), sum(b10) / len(b10)
    z = (auc_a - auc_b) / var**0.5
    got = delong_paired_test(pos_a, neg_a, pos_b, neg_b)
    assert (got.auc_a, got.auc_b, got.z) == pytest.approx((auc_a, auc_b, z), abs=1e-12)
    assert got.p_value == pytest.approx(2 * norm.sf(abs(z)), abs=1e-12)
    swapped = delong_paired_test(pos_b, neg_b, pos_a, neg_a)
    assert swapped.z == pytest.approx(-got.z) and swapped.p_value == pytest.approx(got.p_value)


def test_delong_detects_a_better_score_and_not_an_equal_one():
    rng = np.random.default_rng(7)
    truth = np.r_[np.ones(300), np.zeros(300)].astype(bool)
    signal = truth + rng.normal(0, 1, truth.size)
    better, worse = signal, signal + rng.normal(0, 2, truth.size)
    assert delong_paired_test(better[truth], better[~truth], worse[truth], worse[~truth]).p_value < 0.01
    same = delong_paired_test(better[truth], better[~truth], better[truth], better[~truth])
    assert (same.z, same.p_value) == (0.0, 1.0)


@pytest.mark.parametrize("call,match", [
    (lambda: auroc([], [1.0]), "at least 1"),
    (lambda: auroc([np.nan], [1.0]), "finite"),
    (lambda: auroc_ci([1.0], [0.0, 0.5]), "at least 2"),
    (lambda: delong_paired_test([1.0, 2.0], [0.0, 0.5], [1.0, 2.0, 3.0], [0.0, 0.5]), "same examples"),
])
def test_bad_scores_are_refused(call, match):
    with pytest.raises(AnalysisError, match=match):
        call()
