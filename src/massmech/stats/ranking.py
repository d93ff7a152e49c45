"""How well a score separates two groups: AUROC, its DeLong interval, and DeLong's paired test.

The AUROC is the Mann-Whitney probability that a positive outranks a negative, ties counted 1/2:

    AUROC = mean over pairs (i, j) of psi(pos_i, neg_j),  psi(x, y) = 1 if x > y, 1/2 if x == y, else 0

DeLong, DeLong & Clarke-Pearson (1988) estimate its variance from the *placements*
``V10_i = mean_j psi(pos_i, neg_j)`` and ``V01_j = mean_i psi(pos_i, neg_j)``:
``var = S10 / m + S01 / n`` with ``S10``, ``S01`` their sample (co)variances over the ``m``
positives and ``n`` negatives. For two scores of the same examples the placements covary, which
gives the variance of the difference of two correlated AUROCs and a z-test. Placements are
computed from mid-ranks, ``O((m + n) log(m + n))``.

>>> auroc([3.0, 2.0], [1.0, 2.0])
0.875
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from massmech.errors import AnalysisError

Scores = Sequence[float] | np.ndarray


class DelongTest(NamedTuple):
    """Result of :func:`delong_paired_test`.

    Attributes:
        auc_a: AUROC of the first score.
        auc_b: AUROC of the second score.
        z: ``(auc_a - auc_b) / se``.
        p_value: two-sided p of the normal approximation.

    >>> DelongTest(0.9, 0.7, 2.0, 0.0455).auc_a
    0.9
    """

    auc_a: float
    auc_b: float
    z: float
    p_value: float


def auroc(scores_pos: Scores, scores_neg: Scores) -> float:
    """Area under the ROC curve: P(positive score > negative score), ties counted 1/2.

    Args:
        scores_pos: scores of the positive examples (higher = more positive).
        scores_neg: scores of the negative examples.

    Returns:
        The AUROC in [0, 1].

    Raises:
        AnalysisError: an empty group or non-finite scores.

    >>> auroc([0.9, 0.8], [0.1, 0.2]), auroc([1, 1], [1, 1]), auroc([0.0], [1.0])
    (1.0, 0.5, 0.0)
    """
    v10, _ = _placements(*_checked(scores_pos, scores_neg, "auroc", least=1))
    return float(v10.mean())


def auroc_ci(scores_pos: Scores, scores_neg: Scores, *, alpha: float = 0.05) -> tuple[float, float]:
    """Normal interval of the AUROC with DeLong's variance, clipped to [0, 1].

    Args:
        scores_pos: scores of the positive examples, at least 2.
        scores_neg: scores of the negative examples, at least 2.
        alpha: the interval covers ``1 - alpha``.

    Returns:
        ``(low, high)``; ``(auc, auc)`` when the variance is 0 (e.g. perfect separation).

    Raises:
        AnalysisError: fewer than 2 examples in a group, non-finite scores, ``alpha`` out of range.

    >>> [round(x, 3) for x in auroc_ci([0.9, 0.7, 0.4, 0.8], [0.5, 0.3, 0.6, 0.1])]
    [0.592, 1.0]
    """
    from scipy.stats import norm

    if not 0.0 < alpha < 1.0:
        raise AnalysisError(f"auroc_ci needs 0 < alpha < 1, got {alpha}")
    pos, neg = _checked(scores_pos, scores_neg, "auroc_ci", least=2)
    v10, v01 = _placements(pos, neg)
    auc = float(v10.mean())
    se = float(np.sqrt(v10.var(ddof=1) / pos.size + v01.var(ddof=1) / neg.size))
    z = float(norm.ppf(1 - alpha / 2))
    return max(0.0, auc - z * se), min(1.0, auc + z * se)


def delong_paired_test(pos_a: Scores, neg_a: Scores, pos_b: Scores, neg_b: Scores) -> DelongTest:
    """DeLong's test that two scores of the same examples have the same AUROC (two-sided).

    ``pos_a[i]`` and ``pos_b[i]`` must score the same positive example, likewise the negatives.

    Args:
        pos_a: first score of the positives.
        neg_a: first score of the negatives.
        pos_b: second score of the same positives, same order.
        neg_b: second score of the same negatives, same order.

    Returns:
        A :class:`DelongTest`. When the variance of the difference is 0 the p-value is 1 for
        equal AUROCs and 0 otherwise (z is then 0 or +-inf).

    Raises:
        AnalysisError: fewer than 2 examples in a group, the two scores on different numbers of
            examples, or non-finite scores.

    >>> t = delong_paired_test([0.9, 0.8, 0.7], [0.1, 0.2, 0.75], [0.9, 0.8, 0.7], [0.1, 0.2, 0.75])
    >>> t.z, t.p_value
    (0.0, 1.0)
    """
    from scipy.stats import norm

    pa, na = _checked(pos_a, neg_a, "delong_paired_test (a)", least=2)
    pb, nb = _checked(pos_b, neg_b, "delong_paired_test (b)", least=2)
    if pa.size != pb.size or na.size != nb.size:
        raise AnalysisError(f"delong_paired_test needs both scores on the same examples: positives "
                            f"{pa.size} vs {pb.size}, negatives {na.size} vs {nb.size}")
    v10a, v01a = _placements(pa, na)
    v10b, v01b = _placements(pb, nb)
    auc_a, auc_b = float(v10a.mean()), float(v10b.mean())
    s10 = np.cov(np.vstack([v10a, v10b]), ddof=1)
    s01 = np.cov(np.vstack([v01a, v01b]), ddof=1)
    contrast = np.array([1.0, -1.0])
    var = float(contrast @ s10 @ contrast / pa.size + contrast @ s01 @ contrast / na.size)
    diff = auc_a - auc_b
    if var <= 1e-15:
        return DelongTest(auc_a, auc_b, 0.0 if diff == 0 else float(np.sign(diff) * np.inf), 1.0 if diff == 0 else 0.0)
    z = diff / np.sqrt(var)
    return DelongTest(auc_a, auc_b, float(z), float(min(1.0, 2 * norm.sf(abs(z)))))


def _checked(pos: Scores, neg: Scores, who: str, *, least: int) -> tuple[np.ndarray, np.ndarray]:
    pos, neg = np.asarray(pos, dtype=float).ravel(), np.asarray(neg, dtype=float).ravel()
    if pos.size < least or neg.size < least:
        raise AnalysisError(f"{who} needs at least {least} positive and {least} negative scores, "
                            f"got {pos.size} and {neg.size}")
    if not (np.isfinite(pos).all() and np.isfinite(neg).all()):
        raise AnalysisError(f"{who}: scores must be finite (NaN or inf found)")
    return pos, neg


def _placements(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DeLong placements ``(V10, V01)`` from mid-ranks (ties counted 1/2)."""
    from scipy.stats import rankdata

    both = rankdata(np.concatenate([pos, neg]))
    below_pos = both[: pos.size] - rankdata(pos)  # negatives under each positive (+1/2 per tie)
    below_neg = both[pos.size:] - rankdata(neg)  # positives under each negative (+1/2 per tie)
    return below_pos / neg.size, 1.0 - below_neg / pos.size
