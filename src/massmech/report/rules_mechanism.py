"""The ledger's rules for the mechanism claims (issue 27), each fixed before the run it judges.

P9 was "not testable offline" until the position-shift study (:mod:`massmech.studies.shift`):
moving the same text later changes nothing that RoPE itself computes (a logit depends on ``i - j``
only), so what is measured is how much each band of the model's own Q/K and attention logits
changes when the text sits later, after unrelated text.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from massmech.report.rules import NoData
from massmech.studies.shift.study import CHANGES, SLOW

BAND_LINE = ("high", "mid", "low")


def _shares(slow: pd.DataFrame, measure: str) -> dict[int, tuple[int, int]]:
    """Per shift: (layers where the slowest third changed least, layers)."""
    d = slow[slow.measure == measure]
    return {int(s): (int(g.slow_least.sum()), len(g)) for s, g in d.groupby("shift")}


def position_shift(path: Path, model: str) -> tuple[str, str]:
    """P9 v1: at every shift the slowest third of the RoPE pairs changes least (attention-logit
    contributions among the text's tokens) in >= 2/3 of the layers: reproduces; in <= 1/3 (its
    chance level) at every shift: contradicted; otherwise partly. Q and K before RoPE beside it."""
    if not (path / SLOW).is_file() or not (path / CHANGES).is_file():
        raise NoData(f"no {SLOW} in {path}")
    slow, rel = pd.read_parquet(path / SLOW), pd.read_parquet(path / CHANGES)
    logit = _shares(slow, "logit")
    if not logit:
        raise NoData(f"no attention-logit rows in {path / SLOW}")
    largest = max(logit)
    med = rel[(rel.measure == "logit") & (rel["shift"] == largest)].groupby("band").relative.median()
    parts = [f"{a}/{n} layers at shift {s}" for s, (a, n) in sorted(logit.items())]
    text = ("attention logits: the slowest third changes least in " + ", ".join(parts)
            + f"; median relative change at shift {largest}: "
            + ", ".join(f"{b} {med[b]:.3f}" for b in BAND_LINE if b in med.index))
    for site in ("q", "k"):
        shares = _shares(slow, site)
        if shares:
            text += f"; {site.upper()} before RoPE: " + ", ".join(f"{a}/{n}" for _, (a, n) in sorted(shares.items()))
    fractions = [a / n for a, n in logit.values()]
    if min(fractions) >= 2 / 3:
        return text, "reproduces"
    if max(fractions) <= 1 / 3:
        return text, "contradicted"
    return text, "partly"
