"""The robust emergence measure (issue 14, finding 4): bands by wavelength, Q/K minus V, intervals."""

import numpy as np
import pytest

import massmech as mm
from massmech.core.emergence import emergence, emergence_from_windows
from massmech.core.frequency import frequency_analysis
from massmech.errors import AnalysisError


def _chunks(model, n=6, length=32):
    windows = [[(7 * j + 3 * i) % 200 + 1 for i in range(length)] for j in range(2 * n)]
    return [mm.capture_stats(model, windows[2 * c: 2 * c + 2], sites=("q", "k", "v"), stages=("pre",), progress=False)
            for c in range(n)]


def test_v_with_the_same_spectrum_as_k_means_no_emergence():
    """The old measure calls K 'emerged' from its own share alone; with V as concentrated, it is not."""
    model = mm.load_model("tiny-llama")
    chunks = _chunks(model)
    rope = model.rope
    for c in chunks:  # V gets exactly K's energy per dim, with most of it in the slowest pairs
        k = c.sumsq[("k", "pre")]
        slow = np.zeros(rope.d_head, dtype=bool)
        for p in range(rope.n_pairs // 2, rope.n_pairs):
            slow[list(rope.pair_dims(p))] = True
        k[..., slow] *= 50
        c.sumsq[("v", "pre")] = k.clone()
    old = frequency_analysis(chunks[0], context_len=32, threshold_share=0.75).summary["k.pre"]["threshold_layer"]
    assert old == 0  # a threshold on K's share alone
    em = emergence(chunks, context_len=32, n_boot=200)
    assert em.summary["k"][1.0] is None  # K never above its control
    row = em.layers[(em.layers.site == "k") & (em.layers.factor == 1.0)]
    assert np.allclose(row.minus_v, 0) and (row.concentration > 1).all()


def test_k_concentrated_beyond_v_from_layer_one_emerges_at_one():
    model = mm.load_model("tiny-llama")
    chunks = _chunks(model)
    rope = model.rope
    slow = np.zeros(rope.d_head, dtype=bool)
    for p in range(rope.n_pairs):
        slow[list(rope.pair_dims(p))] = rope.wavelengths(0)[p] > 32
    for i, c in enumerate(chunks):
        k = c.sumsq[("k", "pre")]
        k[1:, :, slow] *= 30 + i  # layers >= 1, a little noise across chunks
    em = emergence(chunks, context_len=32, factors=(1.0,), n_boot=200)
    assert em.summary["k"][1.0] == 1
    assert "Emergence(" in repr(em)


def test_bad_input():
    model = mm.load_model("tiny-llama")
    with pytest.raises(AnalysisError, match="at least 2 chunks"):
        emergence(_chunks(model, n=1), context_len=32)
    with pytest.raises(AnalysisError, match="one length"):
        emergence_from_windows(model, [[1, 2, 3], [1, 2]], n_chunks=2)
    only_qk = mm.capture_stats(model, [[1, 2, 3, 4]], sites=("q", "k"), stages=("pre",), progress=False)
    with pytest.raises(AnalysisError, match="missing"):
        emergence([only_qk, only_qk], context_len=4)
