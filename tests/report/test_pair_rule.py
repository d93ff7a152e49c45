"""O12: whole RoPE pairs vs single coordinates on the same examples, beside the KL-matched control."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from massmech.report.rules_mechanism import pair_vs_coordinate
from massmech.report.runs import config_of
from massmech.studies.ablation import run_sweep

N = 60


def _sweep(tmp_path, p_pair: float, p_dim: float, *, below_kl: bool = True):
    """A sweep folder by hand: kv_lookup at k = 1, the pair arm right with p_pair, the coordinate arm with p_dim."""
    rng = np.random.default_rng(0)
    rows, ex = [], []
    for grain, p in (("pair", p_pair), ("dim", p_dim)):
        cond = f"qk.pre.top1.{grain}"
        rows.append({"model": "m", "task": "kv_lookup", "kind": "contextual", "role": "massive", "evaluable": True,
                     "granularity": grain, "k": 1, "condition": cond, "accuracy": p, "p_vs_kl_holm": 0.001,
                     "b_vs_kl": 1 if below_kl else 30, "c_vs_kl": 30 if below_kl else 1, "kl_massive": 0.2})
        ex += [{"model": "m", "task": "kv_lookup", "condition": cond, "uid": u, "correct": bool(rng.random() < p)}
               for u in range(N)]
    pd.DataFrame(rows).to_parquet(tmp_path / "results.parquet")
    pd.DataFrame(ex).to_parquet(tmp_path / "examples.parquet")
    return tmp_path


@pytest.mark.parametrize(("pair", "dim", "below_kl", "verdict"), [
    (0.1, 0.9, True, "reproduces"), (0.1, 0.9, False, "partly"), (0.9, 0.1, True, "contradicted"),
    (0.5, 0.5, True, "no difference detected")])
def test_verdicts(tmp_path, pair, dim, below_kl, verdict):
    text, got = pair_vs_coordinate(_sweep(tmp_path, pair, dim, below_kl=below_kl), "m")
    assert got == verdict and "kv_lookup top-1: pair" in text and "Holm across these 1" in text


def test_the_real_sweep_has_what_the_rule_reads(tmp_path):
    """The pairs-effect preset's quick run on a tiny model: every column the rule reads exists."""
    run_sweep(config_of("pairs-effect", "tiny-llama", quick=True), tmp_path, progress=False)
    text, verdict = pair_vs_coordinate(tmp_path, "tiny-llama")
    assert verdict == "not evaluable" and "no evaluable contextual task" in text  # a random model is at floor
    t = pd.read_parquet(tmp_path / "results.parquet")
    t.assign(evaluable=True).to_parquet(tmp_path / "results.parquet")  # as if the baselines were above chance
    text, verdict = pair_vs_coordinate(tmp_path, "tiny-llama")
    assert "kv_lookup top-1: pair" in text and "kv_lookup top-4: pair" in text and "neutral-text KL" in text
    assert verdict in ("reproduces", "partly", "contradicted", "no difference detected")
