"""Contextual vs parametric relative drop with a hierarchical paired bootstrap (issue 26)."""

import numpy as np
import pytest

from massmech.errors import AnalysisError
from massmech.stats import InteractionResult, paired_bootstrap_interaction


def _task(n_right_kept, n_right_lost, n_wrong):
    base = np.r_[np.ones(n_right_kept + n_right_lost), np.zeros(n_wrong)]
    dis = np.r_[np.ones(n_right_kept), np.zeros(n_right_lost + n_wrong)]
    return base, dis


def test_the_estimate_weights_tasks_equally():
    small = _task(1, 9, 0)  # 10 examples: baseline 1.0, disrupted 0.1
    large = _task(90, 0, 10)  # 100 examples: baseline 0.9, disrupted 0.9
    par = _task(40, 10, 50)  # baseline 0.5, disrupted 0.4: relative drop 0.2
    res = paired_bootstrap_interaction([small, large], [par], n_boot=50)
    contextual = 1 - (0.1 + 0.9) / 2 / ((1.0 + 0.9) / 2)  # per-task means, not 91/110 vs 99/110
    assert res.drop_contextual == pytest.approx(contextual)
    assert res.drop_parametric == pytest.approx(0.2)
    assert res.estimate == pytest.approx(contextual - 0.2)
    assert (res.n_contextual, res.n_parametric, res.n_tasks_contextual, res.n_tasks_parametric) == (110, 100, 2, 1)


def test_pairs_are_resampled_together():
    """Identical baseline and disrupted verdicts: every paired replicate has drop 0 exactly."""
    rng = np.random.default_rng(3)
    tasks = [(x, x.copy()) for x in (rng.integers(0, 2, 30).astype(float) for _ in range(3))]
    tasks = [(np.r_[1.0, b], np.r_[1.0, d]) for b, d in tasks]  # no all-zero baseline
    res = paired_bootstrap_interaction(tasks, tasks[:2], n_boot=300)
    assert (res.estimate, res.ci_low, res.ci_high) == (0.0, 0.0, 0.0)


def _reference_interval(contextual, parametric, n_boot, seed, alpha=0.05):
    """The same bootstrap written as plain loops, with its own random stream."""
    rng = np.random.default_rng(seed)

    def drop(tasks):
        base, dis = [], []
        for _ in tasks:
            b, d = tasks[rng.integers(len(tasks))]
            idx = rng.integers(0, b.size, b.size)
            base.append(b[idx].mean())
            dis.append(d[idx].mean())
        return 1 - np.mean(dis) / np.mean(base)

    diffs = [drop(contextual) - drop(parametric) for _ in range(n_boot)]
    return np.quantile(diffs, [alpha / 2, 1 - alpha / 2])


def test_the_interval_matches_a_loop_implementation_of_the_hierarchical_bootstrap():
    rng = np.random.default_rng(0)

    def task(n, p, lose):
        base = (rng.random(n) < p).astype(float)
        return base, base * (rng.random(n) >= lose)

    contextual = [task(60, 0.8, lose) for lose in (0.1, 0.4, 0.7)]  # heterogeneous tasks: wide interval
    parametric = [task(80, 0.7, 0.05) for _ in range(4)]
    res = paired_bootstrap_interaction(contextual, parametric, n_boot=3000, seed=1)
    lo, hi = _reference_interval(contextual, parametric, 3000, seed=2)
    assert res.ci_low == pytest.approx(lo, abs=0.03) and res.ci_high == pytest.approx(hi, abs=0.03)
    assert res.ci_low < res.estimate < res.ci_high
    # examples-only resampling would be much narrower: task heterogeneity must be in the interval
    assert res.ci_high - res.ci_low > 0.3


def test_repr_is_one_line():
    res = paired_bootstrap_interaction([_task(5, 5, 0)], [_task(10, 0, 0)], n_boot=20)
    assert isinstance(res, InteractionResult) and "\n" not in repr(res)
    assert repr(res).startswith("InteractionResult(0.500 [")
    with pytest.raises(AttributeError):
        res.estimate = 0.0  # frozen


@pytest.mark.parametrize("contextual,parametric,match", [
    ([], [_task(1, 1, 1)], "no contextual"),
    ([(np.ones(3), np.ones(4))], [_task(1, 1, 1)], "contextual task 0"),
    ([_task(1, 1, 1)], [(np.ones(3), np.full(3, 0.5))], "parametric task 0: verdicts"),
    ([_task(1, 1, 1)], [_task(0, 0, 5)], "baseline accuracy 0"),
])
def test_bad_inputs_are_refused_with_context(contextual, parametric, match):
    with pytest.raises(AnalysisError, match=match):
        paired_bootstrap_interaction(contextual, parametric, n_boot=10)
