import numpy as np
import pytest
import torch

import massmech as mm
from massmech.core.rope import RopeSpec

D = 8  # d_head; 4 RoPE pairs, layout half: pair p = dims (p, p + 4)


def _stats(m_q, m_v=None, rope=True):
    """Synthetic stats whose norm M equals the given tensors [layer, head, d]."""
    sumsq = {("q", "pre"): torch.as_tensor(m_q, dtype=torch.float64) ** 2}
    if m_v is not None:
        sumsq[("v", "pre")] = torch.as_tensor(m_v, dtype=torch.float64) ** 2
    zeros = {k: torch.zeros_like(v) for k, v in sumsq.items()}
    spec = RopeSpec(
        d_head=D, rotary_dim=D, layout="half",
        inv_freq=tuple(tuple(100.0 ** (-2 * i / D) for i in range(D // 2)) for _ in range(sumsq[("q", "pre")].shape[0])),
        scaling=(1.0,) * sumsq[("q", "pre")].shape[0],
    )
    n_l = sumsq[("q", "pre")].shape[0]
    return mm.QKVStats(
        model="synthetic", layers=tuple(range(n_l)), n_tokens=10, n_sequences=1,
        sumsq=sumsq, total=zeros, max_abs=zeros, rope=spec if rope else None,
    )


def test_lambda_rule_per_head_known_answer():
    m = torch.ones(1, 2, D)
    m[0, 0, 7] = 20.0  # head 0: mean = 27/8 = 3.375, 20 > 5 * 3.375 -> massive
    m[0, 1, 3] = 4.0  # head 1: mean = 11/8, 4 < 5 * 1.375 -> not massive
    out = mm.detect_massive(_stats(m))
    assert out[["layer", "head", "dim"]].values.tolist() == [[0, 0, 7]]
    row = out.iloc[0]
    assert row.pair == 3 and row.ratio == pytest.approx(20 / 3.375)
    assert row.frequency == pytest.approx(100.0 ** (-6 / 8))
    assert row.wavelength == pytest.approx(2 * np.pi / row.frequency)


def test_lambda_threshold_is_strict_and_tunable():
    m = torch.ones(1, 1, D)
    m[0, 0, 0] = 7.0  # mean = (7 + 7) / 8 = 1.75, so M is exactly 4x the mean
    assert mm.detect_massive(_stats(m), lam=4.0).empty  # ">" not ">="
    assert len(mm.detect_massive(_stats(m), lam=3.99)) == 1


def test_layer_mean_variant_differs():
    m = torch.ones(1, 2, D)
    m[0, 1] = 10.0  # head 1 is uniformly large
    m[0, 0, 2] = 6.0  # head 0: 6 < 5 * 13/8 per head; layer mean = (13 + 80) / 16
    assert mm.detect_massive(_stats(m)).empty
    by_layer = mm.detect_massive(_stats(m), mean="layer", lam=1.5)
    assert set(map(tuple, by_layer[["head", "dim"]].values.tolist())) == {(1, d) for d in range(D)}


def test_topk_rule():
    g = torch.Generator().manual_seed(0)
    m = torch.rand(2, 3, D, generator=g) + 0.1
    out = mm.detect_massive(_stats(m), rule="topk", k=2)
    assert len(out) == 2 * 3 * 2
    for (layer, head), grp in out.groupby(["layer", "head"]):
        assert set(grp.dim) == set(m[layer, head].topk(2).indices.tolist())


def test_v_and_no_rope_have_no_pairs():
    m = torch.ones(1, 1, D)
    m[0, 0, 6] = 50.0
    out = mm.detect_massive(_stats(m, m_v=m))
    v = out[out.site == "v"].iloc[0]
    assert v.pair == -1 and np.isnan(v.frequency)
    no_rope = mm.detect_massive(_stats(m, rope=False))
    assert no_rope.pair.tolist() == [-1] and no_rope.frequency.isna().all()


def test_bad_rule_arguments():
    stats = _stats(torch.ones(1, 1, D))
    with pytest.raises(ValueError, match="lam must be > 0"):
        mm.detect_massive(stats, lam=0)
    with pytest.raises(ValueError, match="k must be in"):
        mm.detect_massive(stats, rule="topk", k=D + 1)
    with pytest.raises(ValueError, match="rule must be"):
        mm.detect_massive(stats, rule="mean")
    with pytest.raises(ValueError, match="no captured"):
        mm.detect_massive(stats, sites=["k"])
