"""Exact power of the exact McNemar test (issue 26): brute force on tiny n, closed forms, simulation."""

import itertools

import numpy as np
import pytest
from scipy.optimize import brentq
from scipy.stats import binom, binomtest

from massmech.errors import AnalysisError
from massmech.stats import decidable, mcnemar_power, min_detectable_effect, min_p_value


def _brute_power(n, p_base, drop, bg, level):
    """Every sequence of n examples over the four cells, its probability, and the test's verdict."""
    cells = {"rw": drop + bg, "wr": bg, "rr": p_base - drop - bg, "ww": 1 - p_base - bg}
    power = 0.0
    for seq in itertools.product(cells, repeat=n):
        prob = float(np.prod([cells[s] for s in seq]))
        b, c = seq.count("wr"), seq.count("rw")
        p = 1.0 if b + c == 0 else binomtest(b, b + c, 0.5).pvalue
        power += prob * (p <= level)
    return power


@pytest.mark.parametrize("n,p_base,drop,bg,alpha", [
    (6, 0.8, 0.5, 0.0, 0.05), (6, 0.7, 0.3, 0.1, 0.3), (5, 0.5, 0.2, 0.15, 0.5), (6, 0.6, 0.0, 0.2, 0.4),
])
def test_power_matches_brute_force_enumeration(n, p_base, drop, bg, alpha):
    got = mcnemar_power(n, p_base, drop, alpha=alpha, discordant_background=bg)
    assert got == pytest.approx(_brute_power(n, p_base, drop, bg, alpha), abs=1e-12)


@pytest.mark.parametrize("n", [10, 37, 100])
def test_without_a_drop_the_power_is_the_size_of_the_test(n):
    size = mcnemar_power(n, 0.6, 0.0, alpha=0.05, discordant_background=0.2)
    assert 0.0 < size <= 0.05


def _one_directional_mde(n, level, target=0.8):
    """Only right -> wrong flips: rejection iff d >= d_min, so power = P(Binomial(n, drop) >= d_min)."""
    d_min = next(d for d in range(n + 1) if 2 * 0.5**d <= level)
    return brentq(lambda x: binom.sf(d_min - 1, n, x) - target, 1e-9, 1 - 1e-9, xtol=1e-12)


@pytest.mark.parametrize("n,n_tests,expected", [(100, 28, 0.134), (40, 48, 0.325), (300, 28, 0.045)])
def test_one_directional_mde_matches_the_closed_form(n, n_tests, expected):
    got = min_detectable_effect(n, 0.8, n_tests=n_tests)
    assert got == pytest.approx(_one_directional_mde(n, 0.05 / n_tests), abs=1e-6)
    assert got == pytest.approx(expected, abs=0.002)  # the figures measured before (issue 26)


def test_mde_with_background_reaches_the_power_in_a_simulation():
    n, level = 100, 0.05 / 28
    mde = min_detectable_effect(n, 0.8, n_tests=28, discordant_background=0.02)
    assert mde == pytest.approx(0.177, abs=0.002)
    assert mcnemar_power(n, 0.8, mde - 0.002, alpha=level, discordant_background=0.02) < 0.8
    rng = np.random.default_rng(0)
    counts = rng.multinomial(n, [mde + 0.02, 0.02, 0.8 - mde - 0.02, 0.18], size=40_000)
    c, b = counts[:, 0], counts[:, 1]
    p = np.minimum(1.0, 2 * binom.cdf(np.minimum(b, c), b + c, 0.5))
    assert (p <= level).mean() == pytest.approx(0.8, abs=0.01)


def test_small_tables_need_large_drops_and_background_makes_it_worse():
    one_way = min_detectable_effect(40, 0.8, n_tests=48)
    both = min_detectable_effect(40, 0.8, n_tests=48, discordant_background=0.02)
    assert 0.31 <= one_way < both <= 0.40


def test_mde_is_none_when_no_drop_can_be_detected():
    assert min_detectable_effect(10, 0.8, n_tests=28) is None  # 10 pairs: best p 2 / 2**10 > 0.05 / 28
    assert min_detectable_effect(10, 0.4, alpha=0.2) is None  # needs 4 pairs: P(Bin(10, 0.4) >= 4) = 0.62
    assert min_detectable_effect(10, 0.8, alpha=0.2) == pytest.approx(
        brentq(lambda x: binom.sf(3, 10, x) - 0.8, 0.01, 0.8, xtol=1e-12), abs=1e-6)


@pytest.mark.parametrize("k", range(0, 12))
def test_min_p_value_is_the_exact_test_of_an_all_one_way_split(k):
    assert min_p_value(k) == pytest.approx(binomtest(0, k, 0.5).pvalue if k else 1.0)


def test_decidable():
    assert not decidable(4, 100, alpha=0.05)  # best p 0.125
    assert not decidable(5, 100, alpha=0.05)  # 0.0625
    assert decidable(6, 100, alpha=0.05)  # 0.03125
    assert not decidable(10, 100, alpha=0.05, n_tests=28)  # 0.00195 > 0.00179
    assert decidable(11, 100, alpha=0.05, n_tests=28)


@pytest.mark.parametrize("call", [
    lambda: mcnemar_power(100, 0.8, 0.85, alpha=0.05),
    lambda: mcnemar_power(100, 0.9, 0.1, alpha=0.05, discordant_background=0.2),
    lambda: mcnemar_power(0, 0.8, 0.1, alpha=0.05),
    lambda: mcnemar_power(100, 0.8, 0.1, alpha=0.0),
    lambda: min_detectable_effect(100, 0.8, power=1.0),
    lambda: min_detectable_effect(100, 0.8, n_tests=0),
    lambda: decidable(5, 4, alpha=0.05),
    lambda: min_p_value(-1),
])
def test_arguments_outside_the_model_are_refused(call):
    with pytest.raises(AnalysisError):
        call()
