"""Intervals, paired tests and corrections of one column of per-example values against a baseline.

Every study summarises per-example values the same way and with the same column names:

=================  ==============================================================
column             meaning
=================  ==============================================================
``mean``           mean over examples (studies rename it: ``accuracy``, ``value``)
``ci_low/high``    95% interval of the mean: Wilson for 0/1 verdicts, else a
                   percentile bootstrap (examples resampled)
``n``              number of examples
``delta``          paired mean difference to the baseline (same examples)
``delta_ci_*``     95% interval of the paired difference: Newcombe's hybrid score
                   interval for paired proportions (method 10) for 0/1 verdicts, else
                   a bootstrap of the paired differences
``b``, ``c``       discordant pairs (0/1 verdicts): right here and wrong in the
                   baseline, and the reverse
``p_value``        exact McNemar test (two-sided binomial test of ``b`` against
                   ``b + c`` at 1/2) for 0/1 verdicts; ``None`` otherwise
``p_holm``         ``p_value`` after Holm's correction across a table (:func:`holm`)
=================  ==============================================================

A bootstrap of paired 0/±1 differences is anti-conservative on few discordant pairs (a 4-0
split has a bootstrap interval that excludes 0, while its exact McNemar p is 0.125), which is
why 0/1 verdicts get exact tests.

>>> import numpy as np
>>> row = describe(np.array([1.0, 1.0, 0.0, 1.0]), baseline=np.array([1.0, 1.0, 1.0, 1.0]))
>>> row["mean"], row["n"], row["delta"], row["b"], row["c"], row["p_value"]
(0.75, 4, -0.25, 0, 1, 1.0)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from massmech.errors import AnalysisError

SUMMARY_COLUMNS = ("mean", "ci_low", "ci_high", "n")
DELTA_COLUMNS = ("delta", "delta_ci_low", "delta_ci_high", "b", "c", "p_value")


def bootstrap_ci(values: np.ndarray, *, n_boot: int = 2000, alpha: float = 0.05, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (resampling examples).

    Args:
        values: per-example values, 1-D.
        n_boot: bootstrap replicates.
        alpha: the interval covers ``1 - alpha``.
        seed: seed of the resampling.

    Returns:
        ``(low, high)``.

    Raises:
        AnalysisError: no values.

    >>> bootstrap_ci(np.ones(5))
    (1.0, 1.0)
    """
    values = np.asarray(values, dtype=float)
    if values.size == 0:
        raise AnalysisError("bootstrap_ci: no values")
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, values.size, size=(n_boot, values.size))].mean(1)
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def is_binary(values: np.ndarray) -> bool:
    """Whether every value is 0 or 1 (verdicts), so exact binomial statistics apply.

    Args:
        values: per-example values.

    Returns:
        False for an empty array.

    >>> is_binary(np.array([0, 1, 1])), is_binary(np.array([0.5, 1.0])), is_binary(np.array([]))
    (True, False, False)
    """
    values = np.asarray(values, dtype=float)
    return values.size > 0 and bool(np.isin(values, (0.0, 1.0)).all())


def wilson_ci(successes: int, n: int, *, alpha: float = 0.05) -> tuple[float, float]:
    """Wilson score interval of a proportion ``successes / n``.

    The bounds at 0 and ``n`` successes are exactly 0 and 1 (not a rounding error away from them).

    Args:
        successes: number of successes, ``0 <= successes <= n``.
        n: number of trials, positive.
        alpha: the interval covers ``1 - alpha``.

    Returns:
        ``(low, high)``.

    Raises:
        AnalysisError: counts out of range.

    >>> [round(x, 4) for x in wilson_ci(4, 4)]
    [0.5101, 1.0]
    >>> wilson_ci(0, 100)[0]
    0.0
    """
    from scipy.stats import norm

    if n <= 0 or not 0 <= successes <= n:
        raise AnalysisError(f"wilson_ci needs 0 <= successes <= n and n > 0, got {successes}/{n}")
    z = float(norm.ppf(1 - alpha / 2))
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    lo = 0.0 if successes == 0 else max(0.0, centre - half)
    hi = 1.0 if successes == n else min(1.0, centre + half)
    return float(lo), float(hi)


def mcnemar_exact(values: np.ndarray, baseline: np.ndarray) -> tuple[int, int, float]:
    """Exact McNemar test of paired 0/1 verdicts: discordant counts ``b``, ``c`` and the p-value.

    ``b`` counts examples right in ``values`` and wrong in ``baseline``, ``c`` the reverse; p is
    the two-sided exact binomial test of ``b`` out of ``b + c`` at 1/2 (1.0 without discordant pairs).

    Args:
        values: 0/1 verdicts of the condition.
        baseline: 0/1 verdicts of the baseline on the same examples, same order.

    Returns:
        ``(b, c, p_value)``.

    Raises:
        AnalysisError: shapes differ, no examples, or values other than 0/1.

    >>> mcnemar_exact(np.array([0, 0, 0, 0, 1]), np.array([1, 1, 1, 1, 1]))
    (0, 4, 0.125)
    """
    values, baseline = _paired(values, baseline)
    if not (is_binary(values) and is_binary(baseline)):
        raise AnalysisError("mcnemar_exact needs 0/1 verdicts on both sides")
    b = int(((values == 1) & (baseline == 0)).sum())
    c = int(((values == 0) & (baseline == 1)).sum())
    return b, c, sign_test(b, c)


def sign_test(up: int, down: int) -> float:
    """Two-sided exact sign test: ``up`` of ``up + down`` at 1/2 (1.0 when both are 0; ties left out).

    >>> sign_test(0, 4), sign_test(9, 1)
    (0.125, 0.021484375)
    """
    from scipy.stats import binomtest

    return 1.0 if up + down == 0 else min(1.0, float(binomtest(up, up + down, 0.5).pvalue))


def sign_flip_exact(differences: Sequence[int] | np.ndarray) -> float:
    """Two-sided exact sign-flip (paired permutation) test of integer paired differences.

    Under the null each example's difference is as likely to have either sign; the p-value is the
    share of the ``2**n`` sign assignments whose sum is at least as far from 0 as the observed sum,
    counted exactly by convolving each example's two outcomes (no sampling). For 0/±1 differences
    it is the exact McNemar test; for sums over repeated draws (e.g. ``[-10, 10]``: ten paired
    rounding realizations per example) it keeps the example as the unit.

    >>> sign_flip_exact([1, 1, 1, 1]), sign_flip_exact([1, 1, 1, 1, 0, 0]) == sign_test(4, 0)
    (0.125, True)
    >>> sign_flip_exact([3, 5, -1, 4, 2, 6, 1])  # |sum| >= 20: all signs +, or one of the two 1s flipped; and mirrored
    0.046875
    """
    d = np.abs(np.asarray(differences, dtype=np.int64))
    if d.size and (np.asarray(differences) != np.round(np.asarray(differences, dtype=float))).any():
        raise AnalysisError("sign_flip_exact needs integer differences (e.g. counts of correct draws)")
    d = d[d != 0]
    observed = int(abs(int(np.asarray(differences, dtype=np.int64).sum())))
    total = int(d.sum())
    counts = np.zeros(2 * total + 1, dtype=object)  # exact integer counts: 2**n overflows floats' precision
    counts[total] = 1
    for x in d:  # each example adds +x or -x
        counts = np.roll(counts, int(x)) + np.roll(counts, -int(x))
    sums = np.arange(-total, total + 1)
    extreme = int(counts[np.abs(sums) >= observed].sum())
    return min(1.0, extreme / 2 ** len(d))


def newcombe_paired_ci(values: np.ndarray, baseline: np.ndarray, *, alpha: float = 0.05) -> tuple[float, float]:
    """Newcombe's interval (1998, method 10) for the difference of paired proportions ``values - baseline``.

    Built from the Wilson intervals of both proportions and the phi correlation of the pairs.

    Args:
        values: 0/1 verdicts of the condition.
        baseline: 0/1 verdicts of the baseline on the same examples, same order.
        alpha: the interval covers ``1 - alpha``.

    Returns:
        ``(low, high)`` of ``mean(values) - mean(baseline)``.

    Raises:
        AnalysisError: shapes differ or no examples.

    >>> [round(x, 4) for x in newcombe_paired_ci(np.array([0, 0, 0, 0, 1]), np.array([1, 1, 1, 1, 1]))]
    [-0.9638, -0.1926]
    """
    values, baseline = _paired(values, baseline)
    n = values.size
    a = float(((values == 1) & (baseline == 1)).sum())
    b = float(((values == 1) & (baseline == 0)).sum())
    c = float(((values == 0) & (baseline == 1)).sum())
    d = n - a - b - c
    p1, p2 = (a + b) / n, (a + c) / n
    l1, u1 = wilson_ci(int(a + b), n, alpha=alpha)
    l2, u2 = wilson_ci(int(a + c), n, alpha=alpha)
    denom = (a + b) * (c + d) * (a + c) * (b + d)
    phi = 0.0 if denom == 0 else (a * d - b * c) / np.sqrt(denom)
    dl1, du1, dl2, du2 = p1 - l1, u1 - p1, p2 - l2, u2 - p2
    delta = p1 - p2
    lo = delta - np.sqrt(max(0.0, dl1 * dl1 - 2 * phi * dl1 * du2 + du2 * du2))
    hi = delta + np.sqrt(max(0.0, du1 * du1 - 2 * phi * du1 * dl2 + dl2 * dl2))
    return float(max(-1.0, lo)), float(min(1.0, hi))


def holm(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjusted p-values (family-wise error), ``None`` entries left out and kept.

    Args:
        p_values: one family's p-values; ``None`` or NaN for rows without a test.

    Returns:
        Adjusted p-values in the input order (``None`` where the input had none).

    >>> holm([0.01, 0.04, None, 0.03])
    [0.03, 0.06, None, 0.06]
    >>> holm([1e-17, 0.5])
    [2e-17, 0.5]
    """
    idx = [i for i, p in enumerate(p_values) if p is not None and not np.isnan(p)]
    m = len(idx)
    out: list[float | None] = [None] * len(p_values)
    running = 0.0
    for rank, i in enumerate(sorted(idx, key=lambda i: p_values[i])):
        running = max(running, min(1.0, (m - rank) * float(p_values[i])))
        out[i] = float(f"{running:.12g}")  # 12 significant digits: a p of 1e-17 stays 1e-17, not 0
    return out


def chance_normalised(accuracy: float, chance: float) -> float:
    """``(accuracy - chance) / (1 - chance)``: 0 at chance, 1 when perfect.

    Args:
        accuracy: observed accuracy.
        chance: accuracy of guessing, below 1.

    Returns:
        The normalised accuracy (negative below chance).

    Raises:
        AnalysisError: ``chance >= 1``.

    >>> chance_normalised(0.75, 0.5)
    0.5
    """
    if chance >= 1.0:
        raise AnalysisError(f"chance_normalised needs chance < 1, got {chance}")
    return (accuracy - chance) / (1.0 - chance)


def evaluable(successes: int, n: int, chance: float, *, floor: float = 0.1) -> bool:
    """Whether a baseline can show an effect.

    Its Wilson interval must lie above ``chance`` and its chance-normalised accuracy be at least
    ``floor``. Rows failing this are "not evaluable at this scale", not evidence for or against
    anything. See also :func:`massmech.stats.decidable` (whether a test could reach a level at all).

    Args:
        successes: baseline successes.
        n: examples.
        chance: accuracy of guessing.
        floor: least chance-normalised accuracy.

    Returns:
        Whether the row is evaluable.

    >>> evaluable(57, 100, 0.5), evaluable(4, 100, 0.0), evaluable(40, 100, 0.0)
    (False, False, True)
    """
    lo, _ = wilson_ci(successes, n)
    return bool(lo > chance and chance_normalised(successes / n, chance) >= floor)


def _paired(values: np.ndarray, baseline: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    values, baseline = np.asarray(values, dtype=float), np.asarray(baseline, dtype=float)
    if baseline.shape != values.shape or values.size == 0:
        raise AnalysisError(f"paired statistics need the same examples: {values.shape} vs {baseline.shape}")
    return values, baseline


def describe(
    values: np.ndarray, *, baseline: np.ndarray | None = None, n_boot: int = 2000, seed: int = 0,
) -> dict[str, float | int | None]:
    """Mean, 95% interval and n of ``values``, and the paired comparison with a baseline.

    With a ``baseline`` on the same examples (same order), also the paired difference, its
    interval and a paired test (see the module docstring). 0/1 verdicts get Wilson / Newcombe
    intervals and the exact McNemar test (with ``b`` and ``c``); other values get bootstrap
    intervals and ``p_value=None``.

    Args:
        values: per-example values.
        baseline: the baseline's values on the same examples, or None.
        n_boot: bootstrap replicates (continuous values only).
        seed: seed of the bootstrap.

    Returns:
        A row with :data:`SUMMARY_COLUMNS` and, with a baseline, :data:`DELTA_COLUMNS`.

    Raises:
        AnalysisError: no values, or a baseline on other examples.

    >>> row = describe(np.array([0.2, 0.4]), baseline=np.array([0.1, 0.2]))
    >>> round(row["mean"], 3), row["n"], round(row["delta"], 3), row["p_value"]
    (0.3, 2, 0.15, None)
    """
    values = np.asarray(values, dtype=float)
    if values.size == 0:
        raise AnalysisError("describe: no values")
    binary = is_binary(values)
    lo, hi = wilson_ci(int(values.sum()), values.size) if binary else bootstrap_ci(values, n_boot=n_boot, seed=seed)
    row: dict[str, float | int | None] = {"mean": float(values.mean()), "ci_low": lo, "ci_high": hi,
                                          "n": int(values.size)}
    if baseline is not None:
        values, baseline = _paired(values, baseline)
        diff = values - baseline
        if binary and is_binary(baseline):
            dlo, dhi = newcombe_paired_ci(values, baseline)
            b, c, p = mcnemar_exact(values, baseline)
        else:
            dlo, dhi = bootstrap_ci(diff, n_boot=n_boot, seed=seed)
            b = c = p = None
        row |= {"delta": float(diff.mean()), "delta_ci_low": dlo, "delta_ci_high": dhi, "b": b, "c": c, "p_value": p}
    return row
