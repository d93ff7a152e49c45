"""Statistics massmech reports, in one place: intervals, paired differences, token NLL.

Every study summarises per-example values the same way and with the same column names:

=================  ==============================================================
column             meaning
=================  ==============================================================
``mean``           mean over examples (studies rename it: ``accuracy``, ``value``)
``ci_low/high``    95% percentile bootstrap interval of the mean (examples resampled)
``n``              number of examples
``delta``          paired mean difference to the baseline (same examples)
``delta_ci_*``     95% bootstrap interval of the paired difference
=================  ==============================================================

>>> import numpy as np
>>> row = describe(np.array([1.0, 1.0, 0.0, 1.0]), baseline=np.array([1.0, 1.0, 1.0, 1.0]))
>>> row["mean"], row["n"], row["delta"]
(0.75, 4, -0.25)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from massmech.errors import AnalysisError

if TYPE_CHECKING:  # pragma: no cover
    from torch import Tensor

SUMMARY_COLUMNS = ("mean", "ci_low", "ci_high", "n")
DELTA_COLUMNS = ("delta", "delta_ci_low", "delta_ci_high")


def bootstrap_ci(values: np.ndarray, *, n_boot: int = 2000, alpha: float = 0.05, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (resampling examples).

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


def describe(
    values: np.ndarray, *, baseline: np.ndarray | None = None, n_boot: int = 2000, seed: int = 0,
) -> dict[str, float | int]:
    """Mean, bootstrap CI and n of ``values``; with a ``baseline`` on the same examples (same
    order), also the paired difference and its CI. Keys: :data:`SUMMARY_COLUMNS` (+ :data:`DELTA_COLUMNS`).
    """
    values = np.asarray(values, dtype=float)
    lo, hi = bootstrap_ci(values, n_boot=n_boot, seed=seed)
    row: dict[str, float | int] = {"mean": float(values.mean()), "ci_low": lo, "ci_high": hi, "n": int(values.size)}
    if baseline is not None:
        baseline = np.asarray(baseline, dtype=float)
        if baseline.shape != values.shape:
            raise AnalysisError(f"paired difference needs the same examples: {values.shape} vs {baseline.shape}")
        diff = values - baseline
        dlo, dhi = bootstrap_ci(diff, n_boot=n_boot, seed=seed)
        row |= {"delta": float(diff.mean()), "delta_ci_low": dlo, "delta_ci_high": dhi}
    return row


def token_nll(logits: Tensor, tokens: Tensor) -> Tensor:
    """Negative log-likelihood of each next token, in fp32: ``logits[:, :-1]`` predicts ``tokens[:, 1:]``.

    Args:
        logits: ``[batch, pos, vocab]``.
        tokens: ``[batch, pos]`` token ids.

    Returns:
        ``[batch, pos - 1]``; mask padding yourself (``mask[:, 1:]``).

    >>> import torch
    >>> logits = torch.zeros(1, 3, 4)  # uniform over 4 tokens
    >>> round(float(token_nll(logits, torch.tensor([[0, 1, 2]]))[0, 0]), 4) == round(float(np.log(4)), 4)
    True
    """
    import torch

    logp = torch.log_softmax(logits[:, :-1].float(), -1)
    return -logp.gather(-1, tokens[:, 1:, None].to(logp.device))[..., 0]
