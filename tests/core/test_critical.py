"""The critical pair k* (Liu et al. 2023) against hand-computed closed forms, on every RoPE variant."""

import math

import numpy as np
import pytest
import torch

import massmech as mm
from massmech.core.critical import (
    band_prediction,
    beyond_critical,
    critical_pair_from_frequencies,
    d_extra,
)
from massmech.core.rope import RopeSpec
from massmech.errors import AnalysisError, RopeError


def closed_form(base, rotary_dim, train_context, factor=1.0):
    """k* = (d/2) ln(T / (2 pi factor)) / ln(base): frequencies base^(-2p/d) / factor."""
    return rotary_dim / 2 * math.log(train_context / (2 * math.pi * factor)) / math.log(base)


def test_llama2_shape_oracle():
    k = RopeSpec.from_base(10_000, 128).critical_pair(4096, layer=0)
    assert k == pytest.approx(64 * math.log(4096 / (2 * math.pi)) / math.log(1e4), abs=1e-9)
    assert k == pytest.approx(45.027, abs=1e-3)
    inv = 10_000 ** (-np.arange(0, 128, 2) / 128)
    assert d_extra(inv, 4096) == 92  # 2 * ceil(45.03)
    beyond = beyond_critical(inv, 4096)
    assert beyond.sum() == 64 - 46 and not beyond[45] and beyond[46]  # pairs 46..63 never turn once


@pytest.mark.parametrize("base,d,t", [(1e4, 64, 2048), (5e5, 128, 8192), (1e6, 256, 32768), (100, 8, 64), (1e4, 8, 1e6)])
def test_equals_closed_form_for_geometric_frequencies_also_outside_the_spectrum(base, d, t):
    k = critical_pair_from_frequencies(RopeSpec.from_base(base, d).frequencies(0), t)
    assert k == pytest.approx(closed_form(base, d, t), rel=1e-9, abs=1e-9)


def test_smollm2_shape():
    # SmolLM2-135M: rope_theta 1e5, head_dim 64, context 8192 (its GGUF metadata: llama.context_length)
    k = RopeSpec.from_base(100_000, 64).critical_pair(8192, layer=0)
    assert k == pytest.approx(32 * math.log(8192 / (2 * math.pi)) / math.log(1e5), abs=1e-9)
    assert round(k, 2) == 19.94
    assert d_extra(RopeSpec.from_base(100_000, 64).frequencies(0), 8192) == 40


def _llama3_by_hand(base=500_000.0, d=128, factor=8.0, low=1.0, high=4.0, original=8192):
    inv = base ** (-np.arange(0, d, 2) / d)
    wl = 2 * math.pi / inv
    out = np.where(wl > original / low, inv / factor, inv)
    mid = (wl >= original / high) & (wl <= original / low)
    smooth = (original / wl - low) / (high - low)
    out[mid] = ((1 - smooth) * inv / factor + smooth * inv)[mid]
    return out


def test_llama3_scaled_spectrum():
    inv = _llama3_by_hand()
    spec = RopeSpec.from_base(500_000, 128, scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                    "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})
    np.testing.assert_allclose(spec.frequencies(0), inv, rtol=1e-6)
    # T = 131072: the crossing lies among the fully interpolated pairs, frequencies base^(-2p/d) / 8
    k = critical_pair_from_frequencies(inv, 131_072)
    assert k == pytest.approx(closed_form(5e5, 128, 131_072, factor=8.0), abs=1e-9)
    assert k == pytest.approx(38.36, abs=5e-3)
    assert spec.critical_pair(131_072) == [pytest.approx(k, abs=1e-5)]
    # T = 8192 falls in the smoothed band: k* brackets, and scaling moves it below plain RoPE's
    k8 = critical_pair_from_frequencies(inv, 8192)
    wl = 2 * math.pi / inv
    assert wl[math.floor(k8)] < 8192 < wl[math.ceil(k8)]
    assert k8 < closed_form(5e5, 128, 8192)
    assert list(np.flatnonzero(beyond_critical(inv, 8192))) == list(range(math.ceil(k8), 64))


def test_yarn_ramp_ends_at_the_critical_dimension():
    """YaRN interpolates fully from ceil(find_correction_dim(beta_slow=1)) on: transformers' own k*."""
    plain = RopeSpec.from_base(10_000, 64).frequencies(0)
    yarn = RopeSpec.from_base(10_000, 64, scaling={"rope_type": "yarn", "factor": 4.0, "beta_fast": 32.0,
                                                  "beta_slow": 1.0, "original_max_position_embeddings": 2048}).frequencies(0)
    fully = np.flatnonzero(np.isclose(yarn, plain / 4, rtol=1e-5))
    k = critical_pair_from_frequencies(plain, 2048)
    assert fully[0] == math.ceil(k) == d_extra(plain, 2048) // 2


def test_gemma3_local_and_global_layers():
    from transformers import Gemma3TextConfig

    spec = RopeSpec.from_hf_config(Gemma3TextConfig(num_hidden_layers=6, head_dim=256))
    ks = spec.critical_pair(32_768)
    assert ks[:5] == [pytest.approx(closed_form(1e4, 256, 32_768), abs=1e-6)] * 5
    assert ks[5] == pytest.approx(closed_form(1e6, 256, 32_768), abs=1e-6)
    assert band_prediction(spec, 5, 32_768).base_rate > band_prediction(spec, 0, 32_768).base_rate
    # the larger Gemma 3s scale the global layers linearly by 8
    scaled = RopeSpec.from_hf_config(Gemma3TextConfig(
        num_hidden_layers=6, head_dim=256,
        rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 1e4},
                         "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6}}))
    assert scaled.critical_pair(131_072, layer=5) == pytest.approx(closed_form(1e6, 256, 131_072, 8.0), abs=1e-6)
    assert scaled.critical_pair(131_072, layer=0) == pytest.approx(closed_form(1e4, 256, 131_072), abs=1e-6)


def test_partial_rotary_uses_the_rotated_dims():
    spec = RopeSpec.from_base(10_000, 64, rotary_dim=16)
    assert spec.critical_pair(2048, layer=0) == pytest.approx(closed_form(1e4, 16, 2048), abs=1e-9)
    bp = band_prediction(spec, 0, 2048)
    assert len(bp.beyond) == 8 and bp.d_extra <= 16
    neox = mm.load_model("tiny-neox").rope  # rotary_pct 0.5: 8 of 16 dims
    assert neox.critical_pair(512, layer=0) == pytest.approx(closed_form(neox.base(0), 8, 512), rel=1e-4)


def test_d_extra_is_clipped_and_bad_input_rejected():
    inv = 100 ** (-np.arange(0, 8, 2) / 8)  # wavelengths 6.3 .. 198
    assert critical_pair_from_frequencies(inv, 1e6) > 3 and d_extra(inv, 1e6) == 8
    assert critical_pair_from_frequencies(inv, 3.0) < 0 and d_extra(inv, 3.0) == 0
    assert beyond_critical(inv, 3.0).all()
    with pytest.raises(RopeError, match="decrease"):
        critical_pair_from_frequencies(inv[::-1].copy(), 100)
    with pytest.raises(RopeError, match="at least 2"):
        critical_pair_from_frequencies([1.0], 100)
    with pytest.raises(AnalysisError, match="train_context"):
        critical_pair_from_frequencies(inv, 0)
    assert critical_pair_from_frequencies(torch.tensor(inv), 64) == pytest.approx(critical_pair_from_frequencies(inv, 64))


def _stats():
    x = torch.randn(2, 64, 2, 16, generator=torch.Generator().manual_seed(0))
    q = x.clone()
    q[..., 6] *= 10.0  # dim 6 (pair 6, beyond k*) massive in Q
    q[..., 9] *= 10.0  # dim 9 (pair 1, within) too
    return mm.core.activations.from_activations({"q": q, "k": x, "v": x}, rope=RopeSpec.from_base(10_000, 16, n_layers=1))


def test_frequency_analysis_unchanged_without_train_context(tmp_path):
    import massmech.core.activations  # noqa: F401

    stats = _stats()
    a = mm.frequency_analysis(stats, context_len=64, lam=3)
    assert a.predicted is None and "train_context" not in a.params
    assert not any(k.startswith("critical") for v in a.summary.values() for k in v)
    folder = a.save(tmp_path / "a")
    assert sorted(p.name for p in folder.iterdir()) == ["frequency.json", "layers.parquet", "manifest.json",
                                                       "massive.parquet", "pairs.parquet"]
    assert mm.FrequencyAnalysis.load(folder).predicted is None


def test_frequency_analysis_predicted(tmp_path):
    import massmech.core.activations  # noqa: F401

    stats = _stats()
    a = mm.frequency_analysis(stats, context_len=64, lam=3)
    b = mm.frequency_analysis(stats, context_len=64, lam=3, train_context=1000)
    assert a.pairs.equals(b.pairs) and a.layers.equals(b.layers) and a.massive.equals(b.massive)
    k = closed_form(1e4, 16, 1000)  # 4.4: pairs 5, 6, 7 beyond
    row = b.predicted.set_index("site").loc["q"]
    assert row.critical_pair == pytest.approx(k) and row.base_rate == pytest.approx(3 / 8) and row.d_extra == 10
    massive_q = b.massive[b.massive.site == "q"]
    assert sorted(massive_q.dim.unique()) == [6, 9]
    assert row.n_massive == len(massive_q)
    pair = massive_q.dim.to_numpy() % 8
    assert row.hit_rate == pytest.approx(np.mean(pair >= k))
    assert row.peak_pair in (1, 6) and row.peak_minus_critical == pytest.approx(row.peak_pair - k)
    s = b.summary["q.pre"]
    assert s["critical_hit_rate"] == pytest.approx(row.hit_rate)
    assert s["critical_lift"] == pytest.approx(row.hit_rate / (3 / 8))
    assert b.summary["v.pre"]["critical_hit_rate"] is None  # no massive dims in the control
    assert b.params["train_context"] == 1000
    loaded = mm.FrequencyAnalysis.load(b.save(tmp_path / "b"))
    assert loaded.predicted.equals(b.predicted) and loaded.summary == b.summary
