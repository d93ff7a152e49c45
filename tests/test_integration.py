"""Integration tests on the real embedded models (marked; still run in CI). Each loads once."""

import math

import numpy as np
import pytest
import torch

import massmech as mm
from massmech.core.corpus import bbc_news, default_corpus
from massmech.diagnostics.doctor import doctor

pytestmark = pytest.mark.integration


def _perplexity(model, ids):
    with torch.inference_mode():
        logits = model.bridge(ids, return_type="logits").float()
    nll = torch.nn.functional.cross_entropy(logits[0, :-1], ids[0, 1:])
    return math.exp(nll.item())


def test_smollm2_doctor():
    verdict = doctor("smollm2-135m")
    assert verdict["ok"], verdict["errors"]
    assert verdict["max_abs_logit_diff"] <= 1e-4
    assert len(verdict["rope_bases"]) == 30
    assert verdict["rope_bases"] == pytest.approx([1e5] * 30, rel=1e-3)  # cfg.rotary_base says 1e4
    assert verdict["rope_fitted_bases"] == pytest.approx([1e5] * 30, rel=1e-3)


def test_smollm2_metadata(smollm2):
    i = smollm2.info
    assert (i.n_layers, i.n_heads, i.n_kv_heads, i.d_head) == (30, 9, 3, 64)
    assert smollm2.bridge.cfg.rotary_base == 10000  # the config is wrong ...
    assert smollm2.rope.base(0) == pytest.approx(1e5, rel=1e-4)  # ... the model is not


def test_gguf_dims_are_in_hf_rotate_half_order(smollm2):
    """llama.cpp stores Q/K rows permuted; transformers must undo it. If it did not, the model
    would rotate the wrong dims together and natural text would be unpredictable."""
    text = bbc_news(seed=1)[0]
    ids = torch.tensor([smollm2.tokenize(text)[0][:256]])
    good = _perplexity(smollm2, ids)
    hf = smollm2.bridge.original_model
    attn = hf.model.layers
    n_heads, d = smollm2.info.n_heads, smollm2.info.d_head
    # Re-apply llama.cpp's permutation (interleave the two halves of each head's rows).
    perm = torch.arange(d).view(2, d // 2).t().reshape(-1)
    saved = [(a.self_attn.q_proj.weight.clone(), a.self_attn.k_proj.weight.clone()) for a in attn]
    try:
        with torch.no_grad():
            for a in attn:
                for proj, h in ((a.self_attn.q_proj, n_heads), (a.self_attn.k_proj, smollm2.info.n_kv_heads)):
                    w = proj.weight.view(h, d, -1)
                    proj.weight.copy_(w[:, perm].reshape_as(proj.weight))
        scrambled = _perplexity(smollm2, ids)
    finally:
        with torch.no_grad():
            for a, (wq, wk) in zip(attn, saved, strict=True):
                a.self_attn.q_proj.weight.copy_(wq)
                a.self_attn.k_proj.weight.copy_(wk)
    assert good < 40, good
    assert scrambled > 3 * good, (good, scrambled)
    assert _perplexity(smollm2, ids) == pytest.approx(good, rel=1e-6)


def test_smollm2_massive_qk_in_low_frequency_half(smollm2):
    """Measured on 4,096 BBC tokens: 100% of massive Q and K dims (lambda=5) sit in the slower
    half of the pairs, from layer 0 on; V has 2 in all 30 layers. Margins below are loose."""
    stats = mm.capture_stats(smollm2, default_corpus(smollm2, n_tokens=2048, seq_len=512), progress=False)
    fa = mm.frequency_analysis(stats, context_len=512)
    pre = fa.layers[fa.layers.stage == "pre"]
    for site in ("q", "k"):
        rows = pre[pre.site == site]
        share = (rows.massive_low_half_share * rows.n_massive).sum() / rows.n_massive.sum()
        assert share >= 0.9, (site, share)
        assert rows[rows.n_massive > 0].layer.min() <= 1
        assert fa.summary[f"{site}.pre"]["low_half_energy_fraction"] > 0.6
    n_q = pre[pre.site == "q"].n_massive.sum()
    n_v = pre[pre.site == "v"].n_massive.sum()
    assert n_v < 0.1 * n_q, (n_v, n_q)
    assert fa.summary["v.pre"]["low_half_energy_fraction"] < fa.summary["k.pre"]["low_half_energy_fraction"]
    # Pair energy is rotation-invariant: pre and post RoPE agree per pair.
    idx = stats.rope.pair_index()
    for site in ("q", "k"):
        e_pre = stats.sumsq[(site, "pre")][..., idx].sum(-1)
        e_post = stats.sumsq[(site, "post")][..., idx].sum(-1)
        np.testing.assert_allclose(e_post.numpy(), e_pre.numpy(), rtol=1e-4)


def test_gemma3_local_global_bases_and_qk_norm(gemma3):
    assert gemma3.info.qk_norm and gemma3.hook_name("q", "pre", 0)[0].endswith("hook_q_normed")
    types = gemma3.bridge.original_model.config.layer_types
    want = [1e6 if t == "full_attention" else 1e4 for t in types]
    assert gemma3.rope.bases() == pytest.approx(want, rel=1e-4)
    report = mm.verify_rope(gemma3, torch.tensor([gemma3.tokenize(bbc_news()[0])[0][:128]]))
    assert report.ok
    assert report.fitted_bases == pytest.approx(want, rel=1e-3)


def test_gemma3_capture(gemma3):
    stats = mm.capture_stats(gemma3, default_corpus(gemma3, n_tokens=512, seq_len=256), progress=False)
    assert stats.norm("q", "pre").shape == (18, 4, 256)
    assert stats.norm("k", "post").shape == (18, 1, 256)
    assert torch.isfinite(stats.norm("q", "post")).all()


def test_analyze_json_on_smollm2(smollm2, tmp_path):
    from massmech.studies.analyze import AnalyzeConfig, run_analyze

    summary = run_analyze(AnalyzeConfig(n_tokens=1024), tmp_path / "run", model=smollm2, progress=False)
    # Measured at 4,096 tokens: low-band (wavelength > 512) energy Q 82%, K 81%, V 59% (= the
    # band's share of pairs, i.e. uniform); effective pairs Q ~6, K ~7, V ~25 of 32.
    pre = {site: summary["by_stage"][f"{site}.pre"] for site in ("q", "k", "v")}
    for site in ("q", "k"):
        assert pre[site]["low_band_energy_fraction"] > 0.7
        assert pre[site]["effective_pairs"] < 12
        assert pre[site]["massive_low_band_share"] > 0.9
    assert pre["v"]["low_band_energy_fraction"] < 0.66
    assert pre["v"]["effective_pairs"] > 18
    # The robust emergence layer (Q/K above V, bootstrap over chunks) is 0 for Q and K at every band
    # factor, at 1,024 and 4,096 tokens alike; the single-threshold layer, reported under its own
    # name, moves with the corpus size (K: 6 at 1,024 tokens, 1 at 4,096), which is why it is not it.
    for site in ("q", "k"):
        em = summary["emergence"][site]
        assert em["layer"] == 0 and set(em["by_factor"].values()) == {0} and em["minus_v_low"] > 0
    assert pre["k"]["threshold_layer"] == 6
    assert (tmp_path / "run" / "figures" / "heatmap.pdf").is_file()


def test_smollm2_teacher_forced_agrees_with_generation(smollm2):
    conds = {"baseline": None, "massive": mm.Disruption(lam=5), "every_step": mm.Disruption(lam=5, kv_cache="every_step")}
    exs = mm.get_task("country_capital").examples(12) + mm.get_task("kv_lookup").examples(12)
    tf = mm.evaluate(smollm2, exs, conds, progress=False)
    gen = mm.generate_exact(smollm2, exs, conds, progress=False)
    assert (tf.condition.to_numpy() == gen.condition.to_numpy()).all() and (tf.uid.to_numpy() == gen.uid.to_numpy()).all()
    agree = (tf.correct.to_numpy() == gen.correct.to_numpy()).mean()
    assert agree >= 0.95, agree
    assert tf[tf.condition == "baseline"].correct.mean() > 0.3  # the tasks are not at floor for this model


def test_smollm2_ablate_controls_replace_as_many_dims(smollm2):
    res = mm.ablate(smollm2, "kv_lookup", n=12, control="random")
    assert res["baseline"]["n_dims"] == 0
    # hundreds of (layer, head, dim) cells per prompt. The control replaces, per head, as many
    # dims as the rule selects there *in its own forward pass*, whose earlier layers carry the
    # control's (not the massive) disruption, so the totals agree closely but not exactly.
    m, c = res["massive"]["n_dims"], res["control"]["n_dims"]
    assert m > 100 and abs(c - m) / m < 0.05
    assert res["massive"]["n"] == res["control"]["n"] == 12


def test_smollm2_base_is_q4_1_so_a_q4_1_round_trip_is_a_no_op(smollm2, monkeypatch):
    """The embedded SmolLM2 is itself Q4_1: the study says so and flags the no-op round trip."""
    from massmech.studies.quant.config import QuantSpec
    from massmech.studies.quant.variants import base_format, compute_weights, same_as_base_format

    base = base_format(smollm2)
    assert base == "GGUF Q4_1 100% (q/k: Q4_1)"
    import gguf

    monkeypatch.setattr(gguf, "GGUFReader", lambda *a, **k: pytest.fail("read the GGUF file a second time"))
    assert base_format(smollm2) == base  # the file is parsed once per process (seconds: its whole vocabulary)
    assert same_as_base_format("gguf-q4_1", base) and not same_as_base_format("gguf-q4_0", base)
    assert compute_weights("smollm2-135m", QuantSpec("gguf-q4_1"), []) == {}  # not one weight moves
    assert len(compute_weights("smollm2-135m", QuantSpec("gguf-q4_0"), [])) == 210  # every decoder matrix


def test_gemma3_gguf_tokenizer_is_not_garbled(gemma3):
    """transformers 5.17 converts the GGUF tokenizer into near character-level pieces without BOS
    (perplexity ~600, capitals 0.00): pyproject asks for >= 5.24."""
    assert gemma3.tokenizer("The capital of France is Paris.").input_ids == [2, 818, 5279, 529, 7001, 563, 9079, 236761]


def test_gguf_conversion_cache_is_exact_and_reused(tmp_path, monkeypatch):
    """The first load converts the GGUF file once; later loads read the cache; nothing differs."""
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from massmech.core import loading as models

    monkeypatch.setenv("MASSMECH_CACHE", str(tmp_path))
    models.load_hf("smollm2-135m")  # cold: converts
    (folder,) = (tmp_path / "converted").glob("SmolLM2-135M-Instruct*")
    assert f"tf{transformers.__version__}" in folder.name and (folder / "model.safetensors").is_file()
    assert sorted(p.name for p in (tmp_path / "converted").iterdir()) == sorted([folder.name, "file-hashes.json"])

    def no_second_conversion(*a, **k):
        raise AssertionError("converted twice")

    monkeypatch.setattr(models, "_convert_gguf", no_second_conversion)
    hf, tok, _, source = models.load_hf("smollm2-135m")  # warm
    assert source.endswith(".gguf")  # provenance names the file, not the cache
    path = models._smollm2_gguf()
    ref = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    ref_sd = ref.state_dict()
    assert all(torch.equal(ref_sd[k], v) for k, v in hf.state_dict().items())
    ref_tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    texts = ["The capital of France is", "  odd   spacing\nüñí 漢字 <|im_start|>user"]
    assert ref_tok(texts).input_ids == tok(texts).input_ids
    assert ref_tok.chat_template == tok.chat_template
