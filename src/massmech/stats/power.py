"""What a paired 0/1 comparison can detect: exact power of the exact McNemar test, minimal effects.

A disruption study compares the verdicts of one model with and without a disruption on the same
``n`` examples and tests the difference with :func:`massmech.stats.mcnemar_exact` (two-sided
exact binomial test of the discordant pairs at 1/2), Holm-corrected over a family of tests. This
module answers, before any compute, what such a table can show.

**The model.** Each example falls independently into one of four cells of the paired table:

==========================  ===================================  ===========================
cell                        probability                          McNemar count
==========================  ===================================  ===========================
right -> wrong              ``drop + discordant_background``     ``c``
wrong -> right              ``discordant_background``            ``b``
right -> right              ``p_base - drop - background``
wrong -> wrong              ``1 - p_base - background``
==========================  ===================================  ===========================

so the baseline accuracy is ``p_base`` and the disrupted accuracy ``p_base - drop``. With
``discordant_background=0`` the drop is *one-directional* (only right -> wrong flips); a
background adds flips both ways at the same rate (each a fraction of all examples), which
leaves the drop unchanged but dilutes the discordant pairs, so it needs a larger drop.

**Exact power.** The number of discordant pairs ``d = b + c`` is Binomial(``n``, ``q``) with
``q = drop + 2 * background``; given ``d``, ``c`` is Binomial(``d``, ``(drop + background) / q``).
The test rejects when its p-value is at most the level, which for each ``d`` is a pair of tails
``c <= k`` or ``c >= d - k``. The power is the exact sum over ``d`` of both; no simulation.
Rejections in the wrong tail count too (the usual definition; at ``drop=0`` the power is the
test's size, at most the level).

**Families.** ``n_tests`` tests at family-wise ``alpha`` are planned at ``alpha / n_tests``: the
first (strictest) step of Holm's procedure and Bonferroni's level. This is conservative: a row
that is not the smallest p of its family meets a laxer Holm level.

>>> round(mcnemar_power(100, 0.8, 0.134, alpha=0.05 / 28), 2)
0.8
>>> min_p_value(4), decidable(4, 100, alpha=0.05)
(0.125, False)
"""

from __future__ import annotations

import numpy as np

from massmech.errors import AnalysisError

_GRID = 200  # grid steps of min_detectable_effect before bisection
_BISECT = 40


def min_p_value(k: int) -> float:
    """Smallest two-sided exact McNemar p-value ``k`` discordant pairs can give: ``min(1, 2 / 2**k)``.

    Reached when all ``k`` pairs go the same way.

    Args:
        k: number of discordant pairs, ``>= 0``.

    Returns:
        The best attainable p-value.

    Raises:
        AnalysisError: ``k`` negative.

    >>> min_p_value(0), min_p_value(4), min_p_value(6)
    (1.0, 0.125, 0.03125)
    """
    if k < 0:
        raise AnalysisError(f"min_p_value needs k >= 0 discordant pairs, got {k}")
    return float(min(1.0, 2.0 * 0.5 ** int(k)))


def decidable(successes_baseline: int, n: int, *, alpha: float, n_tests: int = 1) -> bool:
    """Whether a drop on this baseline could be significant at all.

    Best case: every baseline success flips to a failure, which gives ``successes_baseline``
    discordant pairs all one way and the p-value :func:`min_p_value`. The row is decidable when
    that p is at most ``alpha / n_tests`` (the first Holm step, see the module docstring).

    Args:
        successes_baseline: examples right in the baseline, ``0 <= successes_baseline <= n``.
        n: examples.
        alpha: family-wise level.
        n_tests: tests in the family.

    Returns:
        Whether the best-case p-value reaches the level.

    Raises:
        AnalysisError: counts or levels out of range.

    >>> decidable(4, 100, alpha=0.05), decidable(6, 100, alpha=0.05), decidable(6, 100, alpha=0.05, n_tests=28)
    (False, True, False)
    """
    if n < 1 or not 0 <= successes_baseline <= n:
        raise AnalysisError(f"decidable needs 0 <= successes_baseline <= n and n >= 1, got {successes_baseline}/{n}")
    return min_p_value(successes_baseline) <= _level(alpha, n_tests)


def mcnemar_power(
    n: int, p_base: float, drop: float, *, alpha: float, discordant_background: float = 0.0,
) -> float:
    """Exact power of the two-sided exact McNemar test at level ``alpha`` for a paired drop.

    The baseline accuracy is ``p_base`` and the disrupted one ``p_base - drop`` on the same ``n``
    examples; flips follow the model of the module docstring (one-directional plus an optional
    background of flips both ways). Computed exactly by summing over the number of discordant pairs.

    Args:
        n: paired examples.
        p_base: baseline accuracy.
        drop: drop in accuracy, ``0 <= drop <= p_base - discordant_background``.
        alpha: level of this one test (pass ``alpha / n_tests`` for a family).
        discordant_background: probability of each kind of background flip.

    Returns:
        The probability that the test rejects.

    Raises:
        AnalysisError: arguments outside the model.

    >>> round(mcnemar_power(100, 0.8, 0.0, alpha=0.05), 3)  # no discordant pairs, never rejects
    0.0
    >>> round(mcnemar_power(40, 0.8, 0.3, alpha=0.05, discordant_background=0.02), 3)
    0.943
    """
    p_rw, p_wr = _cells(n, p_base, drop, discordant_background)
    level = _level(alpha, 1)
    return _power(n, p_rw, p_wr, _critical_counts(n, level))


def min_detectable_effect(
    n: int, p_base: float, *, alpha: float = 0.05, n_tests: int = 1, power: float = 0.8,
    discordant_background: float = 0.0,
) -> float | None:
    """Smallest drop in accuracy the exact McNemar test detects with at least ``power``.

    The test is at ``alpha / n_tests``, the first (strictest) step of Holm's procedure, so the
    answer is conservative for a family of ``n_tests`` rows. The drop is searched on a grid of
    1/200 of its range and refined by bisection to about 1e-9 (the exact power is not strictly
    monotone in the drop, the grid finds the first crossing).

    Args:
        n: paired examples.
        p_base: baseline accuracy.
        alpha: family-wise level.
        n_tests: tests in the family.
        power: the power wanted, in (0, 1).
        discordant_background: probability of each kind of background flip (module docstring).

    Returns:
        The drop, or None when even the largest drop the model allows
        (``p_base - discordant_background``) has less power.

    Raises:
        AnalysisError: arguments outside the model.

    >>> round(min_detectable_effect(100, 0.8, n_tests=28), 3)
    0.134
    >>> min_detectable_effect(10, 0.8, n_tests=28) is None  # 10 pairs: best p 2 / 2**10 > 0.05 / 28
    True
    """
    if not 0.0 < power < 1.0:
        raise AnalysisError(f"min_detectable_effect needs 0 < power < 1, got {power}")
    top = p_base - discordant_background
    _cells(n, p_base, max(top, 0.0), discordant_background)
    crit = _critical_counts(n, _level(alpha, n_tests))

    def power_at(drop: float) -> float:
        return _power(n, drop + discordant_background, discordant_background, crit)

    grid = np.linspace(0.0, top, _GRID + 1)
    above = [i for i, drop in enumerate(grid) if power_at(float(drop)) >= power]
    if not above:
        return None
    if above[0] == 0:
        return 0.0
    lo, hi = float(grid[above[0] - 1]), float(grid[above[0]])
    for _ in range(_BISECT):
        mid = 0.5 * (lo + hi)
        lo, hi = (lo, mid) if power_at(mid) >= power else (mid, hi)
    return hi


def _level(alpha: float, n_tests: int) -> float:
    if not 0.0 < alpha < 1.0 or n_tests < 1:
        raise AnalysisError(f"need 0 < alpha < 1 and n_tests >= 1, got alpha={alpha}, n_tests={n_tests}")
    return alpha / n_tests


def _cells(n: int, p_base: float, drop: float, background: float) -> tuple[float, float]:
    """``(P(right -> wrong), P(wrong -> right))`` of the model, checked."""
    if n < 1:
        raise AnalysisError(f"power needs n >= 1 paired examples, got {n}")
    if not 0.0 <= p_base <= 1.0 or drop < 0.0 or background < 0.0:
        raise AnalysisError(f"need 0 <= p_base <= 1, drop >= 0, background >= 0; got p_base={p_base}, "
                            f"drop={drop}, discordant_background={background}")
    if drop + background > p_base + 1e-12 or background > 1.0 - p_base + 1e-12:
        raise AnalysisError(f"the flips do not fit the baseline: drop + background = {drop + background:.4g} must be "
                            f"<= p_base = {p_base:.4g} and background <= 1 - p_base = {1 - p_base:.4g}")
    return drop + background, background


def _critical_counts(n: int, level: float) -> np.ndarray:
    """For ``d = 0..n`` discordant pairs, the largest ``k`` with two-sided p(``k`` of ``d``) <= level; -1 if none.

    For a test at 1/2 the two-sided exact p of ``k <= d / 2`` is ``2 * F(k; d, 1/2)``.
    """
    from scipy.stats import binom

    d = np.arange(n + 1)
    k0 = binom.ppf(level / 2, d, 0.5).astype(int)  # smallest k with F(k) >= level / 2
    crit = np.full(n + 1, -1)
    for shift in (-1, 0, 1):  # F(k0) may equal level / 2 exactly; guard the float edge both ways
        k = np.clip(k0 + shift, 0, d)
        ok = (2 * binom.cdf(k, d, 0.5) <= level) & (k0 + shift >= 0)
        crit = np.where(ok, np.maximum(crit, k), crit)
    return crit


def _power(n: int, p_rw: float, p_wr: float, crit: np.ndarray) -> float:
    """Sum over discordant counts ``d`` of P(d) * P(c in a rejection tail | d)."""
    from scipy.stats import binom

    q = p_rw + p_wr
    if q <= 0.0:
        return 0.0
    d = np.arange(n + 1)
    r = min(1.0, p_rw / q)
    tails = binom.cdf(crit, d, r) + binom.sf(d - crit - 1, d, r)
    tails = np.where(crit >= 0, tails, 0.0)
    return float(np.clip((binom.pmf(d, n, min(1.0, q)) * tails).sum(), 0.0, 1.0))
