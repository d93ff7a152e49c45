"""O6's judge (the massive band predicted by the critical pair k*) on hand-made analyze tables."""

import pandas as pd
import pytest

from massmech.core.catalog import TRAIN_CONTEXTS
from massmech.report.rules import NoData
from massmech.report.rules_mechanism import band_prediction

WAVELENGTHS = [10.0, 100.0, 1e4, 1e5]  # two of four pairs beyond SmolLM2's 8192 tokens: base rate 0.5


def _write(path, q_hits: list[float], k_hits: list[float], peak: int = 3, wavelengths=tuple(WAVELENGTHS)):
    """One head per layer; per layer, four massive dims whose share beyond k* is the given one."""
    path.mkdir()
    pairs, massive = [], []
    for site, hits in (("q", q_hits), ("k", k_hits)):
        for layer, share in enumerate(hits):
            pairs += [dict(site=site, stage="pre", layer=layer, head=0, pair=p, wavelength=w,
                           energy=10.0 if p == peak else 1.0) for p, w in enumerate(wavelengths)]
            beyond = round(4 * share)
            massive += [dict(site=site, stage="pre", layer=layer, head=0, dim=i, pair=3 if i < beyond else 0,
                             wavelength=1e5 if i < beyond else 10.0) for i in range(4)]
    pd.DataFrame(pairs).to_parquet(path / "pairs.parquet")
    pd.DataFrame(massive).to_parquet(path / "massive.parquet")
    return path


@pytest.mark.parametrize(("q", "k", "verdict"), [
    ([1.0] * 8, [0.75] * 8, "reproduces"),
    ([0.0] * 8, [1.0] * 8, "contradicted"),
    ([1.0, 0.0] * 4, [1.0, 0.0] * 4, "no difference detected"),
    ([1.0] * 8, [1.0, 0.0] * 4, "partly"),
    ([1.0] * 3, [1.0] * 3, "not evaluable"),  # 3 layers: 2 * 0.5**3 = 0.25 can never pass Holm's first step
])
def test_the_verdicts(tmp_path, q, k, verdict):
    text, got = band_prediction(_write(tmp_path / "run", q, k), "smollm2-135m")
    assert got == verdict, text
    assert f"training context {TRAIN_CONTEXTS['smollm2-135m'][0]}" in text and "peak pair beyond k* in" in text


def test_an_upward_share_below_half_is_only_partly(tmp_path):
    fast = (10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 1e5)  # one pair of eight beyond k*: base rate 0.12
    text, got = band_prediction(_write(tmp_path / "run", [0.25] * 8, [0.25] * 8, peak=7, wavelengths=fast),
                                "smollm2-135m")
    assert got == "partly" and "0.25 beyond k* vs 0.12" in text


def test_no_cited_context_is_not_evaluable_and_no_tables_is_no_data(tmp_path):
    text, verdict = band_prediction(_write(tmp_path / "run", [1.0] * 8, [1.0] * 8), "tiny-llama")
    assert verdict == "not evaluable" and "no cited training context" in text
    with pytest.raises(NoData, match="no massive.parquet"):
        band_prediction(tmp_path / "empty", "gemma3-270m")


def test_every_embedded_model_has_a_cited_context():
    from massmech.core.catalog import EMBEDDED_MODELS

    for m in EMBEDDED_MODELS:
        tokens, source = TRAIN_CONTEXTS[m]
        assert tokens >= 512 and len(source) > 40


# ------------------------------------------------------------------ O13: the saved-tensor path, over heads
def _saved(path, q_heads: list[float], k_heads: list[float], context: int | None = 8192):
    """One layer (the saved one, after RoPE); per head four massive dims whose share beyond k* is given."""
    import json

    path.mkdir()
    pairs, massive = [], []
    for site, shares in (("q", q_heads), ("k", k_heads)):
        for head, share in enumerate(shares):
            pairs += [dict(site=site, stage="post", layer=10, head=head, pair=p, wavelength=w, energy=10.0 if p == 3 else 1.0)
                      for p, w in enumerate(WAVELENGTHS)]
            beyond = round(4 * share)
            massive += [dict(site=site, stage="post", layer=10, head=head, dim=i, pair=3 if i < beyond else 0,
                             wavelength=1e5 if i < beyond else 10.0) for i in range(4)]
    pd.DataFrame(pairs).to_parquet(path / "pairs.parquet")
    pd.DataFrame(massive).to_parquet(path / "massive.parquet")
    config = {"train_context": context, "train_context_source": "a cited card"} if context else {}
    (path / "manifest.json").write_text(json.dumps({"config": config}))
    return path


@pytest.mark.parametrize(("q", "k", "verdict"), [
    ([1.0] * 32, [1.0] * 8, "reproduces"),
    ([0.0] * 32, [1.0] * 8, "contradicted"),
    ([1.0] * 32, [1.0, 0.0] * 4, "partly"),  # K: 4 up, 4 down
    ([1.0, 0.0] * 16, [1.0, 0.0] * 4, "no difference detected"),
    ([1.0] * 6, [1.0] * 6, "not evaluable"),  # 6 heads: 2 * 0.5**6 = 0.03 > 0.025, Holm's first step
])
def test_o13_counts_heads_of_the_one_saved_layer(tmp_path, q, k, verdict):
    from massmech.report.rules_mechanism import saved_band_prediction

    text, got = saved_band_prediction(_saved(tmp_path / "run", q, k), "llama3-8b-instruct")
    assert got == verdict, text
    assert "training context 8192" in text and "source: a cited card" in text and "heads above/below" in text


def test_o13_without_a_stated_context_is_not_evaluable(tmp_path):
    from massmech.report.rules_mechanism import saved_band_prediction

    assert saved_band_prediction(_saved(tmp_path / "run", [1.0] * 8, [1.0] * 8, context=None), "m")[1] == "not evaluable"


def test_o13_v2_a_holm_significant_test_decides_even_below_the_first_step(tmp_path):
    """20 heads up, 6 down: the 6 cannot reach Holm's first step (2 * 0.5**6 = 0.031 > 0.025) but are
    significant at its second (0.031 < 0.05). Version 1 sets them aside; version 2 counts them."""
    from massmech.report.rules_mechanism import saved_band_prediction

    run = _saved(tmp_path / "run", [1.0] * 20, [0.0] * 6)
    assert saved_band_prediction(run, "m")[1] == "partly"
    text, verdict = saved_band_prediction(run, "m", version=2)
    assert verdict == "contradicted" and "not decidable" not in text
