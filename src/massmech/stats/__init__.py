"""Statistics massmech reports, in one place.

========================  ==================================================================
module                    what
========================  ==================================================================
:mod:`.paired`            per-example summaries against a baseline: Wilson and Newcombe
                          intervals, the exact McNemar and sign-flip tests, Holm, bootstrap,
                          :func:`describe`
:mod:`.power`             what a paired 0/1 comparison can detect: exact power of the exact
                          McNemar test, minimal detectable drop, decidable baselines
:mod:`.interaction`       contextual vs parametric relative drop, hierarchical paired bootstrap
:mod:`.ranking`           AUROC, DeLong interval and DeLong's paired test
:mod:`.nll`               per-token negative log-likelihood
========================  ==================================================================

Every name is importable from here (``from massmech.stats import holm``). The columns studies
report are described in :mod:`massmech.stats.paired`.

>>> import numpy as np
>>> row = describe(np.array([1.0, 1.0, 0.0, 1.0]), baseline=np.array([1.0, 1.0, 1.0, 1.0]))
>>> row["mean"], row["n"], row["delta"], row["b"], row["c"], row["p_value"]
(0.75, 4, -0.25, 0, 1, 1.0)
"""

from massmech.stats.interaction import InteractionResult, paired_bootstrap_interaction
from massmech.stats.nll import token_nll
from massmech.stats.paired import (
    DELTA_COLUMNS,
    SUMMARY_COLUMNS,
    bootstrap_ci,
    chance_normalised,
    describe,
    evaluable,
    holm,
    is_binary,
    mcnemar_exact,
    newcombe_paired_ci,
    sign_flip_exact,
    sign_test,
    wilson_ci,
)
from massmech.stats.power import decidable, mcnemar_power, min_detectable_effect, min_p_value
from massmech.stats.ranking import DelongTest, auroc, auroc_ci, delong_paired_test

__all__ = [
    "DELTA_COLUMNS",
    "SUMMARY_COLUMNS",
    "DelongTest",
    "InteractionResult",
    "auroc",
    "auroc_ci",
    "bootstrap_ci",
    "chance_normalised",
    "decidable",
    "delong_paired_test",
    "describe",
    "evaluable",
    "holm",
    "is_binary",
    "mcnemar_exact",
    "mcnemar_power",
    "min_detectable_effect",
    "min_p_value",
    "newcombe_paired_ci",
    "sign_flip_exact",
    "sign_test",
    "paired_bootstrap_interaction",
    "token_nll",
    "wilson_ci",
]
