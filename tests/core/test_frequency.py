import numpy as np
import pytest
import torch

import massmech as mm
from massmech.core.frequency import context_bands, dim_energy, equal_count_bands, pair_energy
from massmech.core.rope import RopeSpec

D, P = 16, 8  # d_head, pairs; layout half: pair p = dims (p, p + 8)
BASE = 10_000.0


def _spec(n_layers):
    freqs = tuple(BASE ** (-2 * i / D) for i in range(P))
    return RopeSpec(d_head=D, rotary_dim=D, layout="half", inv_freq=(freqs,) * n_layers, scaling=(1.0,) * n_layers)


def _stats(pair_energies, *, sites=("q", "v"), max_len=100):
    """Stats whose per-pair energy is `pair_energies` [layer, head, pair], split evenly over the two dims."""
    e = torch.as_tensor(pair_energies, dtype=torch.float64)
    n_l = e.shape[0]
    sumsq = torch.cat([e / 2, e / 2], dim=-1)  # dims 0..7 then 8..15
    tables = {(s, "pre"): sumsq.clone() for s in sites}
    zeros = {k: torch.zeros_like(v) for k, v in tables.items()}
    return mm.QKVStats(
        model="synthetic", layers=tuple(range(n_l)), n_tokens=max_len, n_sequences=1,
        sumsq=tables, total=zeros, max_abs=zeros, rope=_spec(n_l), meta={"max_len": max_len},
    )


def test_bands():
    spec = _spec(1)
    wl = spec.wavelengths(0)
    bands = context_bands(spec, 0, context_len=100, fast_turns=8)
    assert list(bands[wl > 100]) == ["low"] * int((wl > 100).sum())
    assert list(bands[wl <= 12.5]) == ["high"] * int((wl <= 12.5).sum())
    assert set(bands) == {"high", "mid", "low"}
    assert list(equal_count_bands(8, 2)) == ["high"] * 4 + ["low"] * 4
    assert list(equal_count_bands(8, 4)) == ["high"] * 2 + ["mid-high"] * 2 + ["mid-low"] * 2 + ["low"] * 2
    with pytest.raises(ValueError):
        equal_count_bands(8, 9)


def test_all_energy_in_one_low_pair():
    e = np.full((3, 2, P), 1e-12)
    e[:, :, P - 1] = 1.0  # all energy in the slowest pair
    fa = mm.frequency_analysis(_stats(e))
    q = fa.layers[fa.layers.site == "q"]
    assert np.allclose(q.low_band_energy_fraction, 1.0) and np.allclose(q.low_half_energy_fraction, 1.0)
    assert np.allclose(q.effective_pairs, 1.0, atol=1e-6)
    assert fa.summary["q.pre"]["threshold_layer"] == 0


def test_uniform_energy():
    fa = mm.frequency_analysis(_stats(np.ones((3, 2, P))))
    q = fa.layers[fa.layers.site == "q"]
    assert np.allclose(q.effective_pairs, P)
    assert np.allclose(q.low_half_energy_fraction, 0.5)
    assert np.allclose(q.low_band_energy_fraction, q.low_band_pair_fraction)
    assert fa.summary["q.pre"]["threshold_layer"] is None  # 0.5 < 0.75
    assert fa.summary["q.pre"]["massive_count"] == 0


def test_threshold_layer_is_first_crossing():
    e = np.ones((4, 1, P))
    e[2:, 0, P // 2 :] = 10.0  # layers 2, 3: 40 / 44 of the energy in the low half
    fa = mm.frequency_analysis(_stats(e))
    assert fa.summary["q.pre"]["threshold_layer"] == 2
    assert fa.summary["q.pre"]["low_half_energy_fraction"] == pytest.approx((4 + 4 + 40 + 40) / (8 + 8 + 44 + 44))


def test_massive_share_in_low_band():
    e = np.ones((1, 1, P))
    e[0, 0, P - 1] = 400.0  # M per dim = sqrt(200) ~ 14.1 vs mean ~ 2.6: massive, both dims of the slowest pair
    fa = mm.frequency_analysis(_stats(e))
    assert fa.summary["q.pre"]["massive_count"] == 2
    assert fa.summary["q.pre"]["massive_low_band_share"] == 1.0


def test_pair_energy_is_rotation_invariant_but_dims_are_not(tiny_models):
    model = tiny_models["tiny-llama"]
    stats = mm.capture_stats(model, ["rotation keeps the norm of every pair " * 3], progress=False)
    pe = pair_energy(stats)
    pre = pe[(pe.site == "q") & (pe.stage == "pre")].energy.to_numpy()
    post = pe[(pe.site == "q") & (pe.stage == "post")].energy.to_numpy()
    np.testing.assert_allclose(post, pre, rtol=1e-4)
    dims_pre, dims_post = stats.sumsq[("q", "pre")], stats.sumsq[("q", "post")]
    assert not torch.allclose(dims_pre, dims_post, rtol=1e-2)


def test_no_rope_and_empty(tiny_models):
    stats = mm.capture_stats(tiny_models["tiny-gpt2"], ["no rope here"], progress=False)
    with pytest.raises(mm.RopeError, match="no RoPE"):
        mm.frequency_analysis(stats)
    assert len(mm.detect_massive(stats, rule="topk", k=1)) > 0  # per-dim analysis still works
    empty = mm.QKVStats(model="x", layers=(), n_tokens=0, n_sequences=0, sumsq={}, total={}, max_abs={}, rope=_spec(1))
    with pytest.raises(ValueError, match="empty statistics"):
        mm.frequency_analysis(empty)


def test_dim_view_sums_to_pair_view():
    e = np.arange(1, 1 + 2 * 3 * P, dtype=float).reshape(2, 3, P)
    stats = _stats(e, sites=("q",))
    dims = dim_energy(stats)
    pairs = pair_energy(stats)
    summed = dims.groupby(["layer", "head", "pair"]).energy.sum().to_numpy()
    np.testing.assert_allclose(summed, pairs.sort_values(["layer", "head", "pair"]).energy.to_numpy())
    assert (dims.pair == dims.dim % P).all()


def test_partial_rotary_dims_are_in_no_band():
    """With partial rotary, dims outside rotary_dim have no pair: never counted as low band."""
    spec = RopeSpec(d_head=D + 4, rotary_dim=D, layout="half", inv_freq=(_spec(1).inv_freq[0],), scaling=(1.0,))
    m2 = torch.ones(1, 1, D + 4, dtype=torch.float64)
    m2[0, 0, D + 2] = 900.0  # an unrotated dim: massive, but in no band
    zeros = torch.zeros_like(m2)
    stats = mm.QKVStats(
        model="partial", layers=(0,), n_tokens=10, n_sequences=1, sumsq={("q", "pre"): m2},
        total={("q", "pre"): zeros}, max_abs={("q", "pre"): zeros}, rope=spec, meta={"max_len": 100},
    )
    fa = mm.frequency_analysis(stats)
    assert fa.summary["q.pre"]["massive_count"] == 1
    assert fa.summary["q.pre"]["massive_low_band_share"] == 0.0
    assert len(fa.pairs) == P  # only rotated dims form pairs
