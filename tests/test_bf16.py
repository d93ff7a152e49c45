"""bf16 on the core path (issue 16): load -> doctor -> capture -> detect -> frequency_analysis ->
ablate on a tiny random model on CPU, and a doctor whose half-precision tolerance is a real check."""

from __future__ import annotations

import pytest
import torch

import massmech as mm
from massmech.causal.disruption import Disruption
from massmech.core.bridge import hf_model
from massmech.diagnostics.doctor import FP32_LOGIT_TOL, doctor, logit_tolerance, unit_roundoff

TEXTS = [
    "The history of the city goes back more than two thousand years.",
    "Its old harbour now shelters fishing boats and a few ferries.",
    "short",
]


@pytest.fixture(scope="module")
def fp32_and_bf16():
    return mm.load_model("tiny-llama"), mm.load_model("tiny-llama", dtype="bfloat16")


def test_core_path_in_bfloat16(fp32_and_bf16):
    fp32, bf16 = fp32_and_bf16
    assert bf16.info.dtype == "bfloat16"
    assert {p.dtype for p in hf_model(bf16).parameters()} == {torch.bfloat16}

    verdict = doctor(bf16)  # the pristine reference is reloaded from the spec, in bf16
    assert verdict["ok"], verdict
    assert (verdict["device"], verdict["dtype"]) == ("cpu", "bfloat16")
    rule = verdict["logit_tol_rule"]
    assert rule["unit_roundoff"] == 2**-8 and rule["n_layers"] == 2 and rule["logit_scale"] > 0
    assert verdict["logit_tol"] == logit_tolerance("bfloat16", 2, rule["logit_scale"]) > FP32_LOGIT_TOL

    stats = mm.capture_stats(bf16, TEXTS, batch_size=2, progress=False)
    ref = mm.capture_stats(fp32, TEXTS, batch_size=2, progress=False)
    assert stats.n_tokens == ref.n_tokens and stats.keys() == ref.keys()
    for key in stats.keys():
        assert stats.sumsq[key].dtype == torch.float64  # bf16 activations, fp32 per batch, fp64 across
        assert torch.isfinite(stats.sumsq[key]).all()
        # the same model in bf16: norms within bf16 rounding carried through two layers
        torch.testing.assert_close(stats.norm(*key), ref.norm(*key), rtol=0.05, atol=1e-2)
        torch.testing.assert_close(stats.maxabs(*key), ref.maxabs(*key), rtol=0.05, atol=1e-2)

    top = mm.detect_massive(stats, rule="topk", k=2, sites=["k"], stages=["post"])
    top_ref = mm.detect_massive(ref, rule="topk", k=2, sites=["k"], stages=["post"])
    assert len(top) == len(top_ref) == 2 * 2 * 2  # layers x KV heads x k
    cells = lambda t: set(zip(t["layer"], t["head"], t["dim"], strict=True))  # noqa: E731
    assert len(cells(top) & cells(top_ref)) >= 0.75 * len(top)  # the top dims survive bf16 (near-ties may swap)

    fa = mm.frequency_analysis(stats)
    fa_ref = mm.frequency_analysis(ref)
    for key in ("q.post", "k.post"):
        low, low_ref = fa.summary[key]["low_band_energy_fraction"], fa_ref.summary[key]["low_band_energy_fraction"]
        assert 0 < low < 1 and abs(low - low_ref) < 0.02

    res = mm.ablate(bf16, "kv_lookup", n=6, disruption=Disruption(rule="topk", k=2), control="lowest")
    assert res["massive"]["n"] == res["control"]["n"] == 6
    assert res["massive"]["n_dims"] == res["control"]["n_dims"] > 0  # something was disrupted, count-matched
    assert all(0 <= res[c]["accuracy"] <= 1 for c in ("baseline", "massive", "control"))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_doctor_tolerance_is_a_real_check(dtype):
    """A correct half-precision model whose plain-HF reference rounds differently (SDPA attention,
    the Hugging Face default, against the bridge's own attention) passes only with the scaled
    tolerance: the fp32 one would fail it. A real mismatch still fails."""
    import transformers as tf

    from massmech.core.tiny import byte_tokenizer_dir

    tok = tf.PreTrainedTokenizerFast.from_pretrained(byte_tokenizer_dir())
    cfg = tf.LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    hf = tf.LlamaForCausalLM(cfg).to(dtype).eval()
    assert hf.config._attn_implementation == "sdpa"

    verdict = doctor(hf, tok)
    diff = verdict["max_abs_logit_diff"]
    assert verdict["ok"] and verdict["checks"]["logits_match"], verdict
    assert verdict["dtype"] == str(dtype).removeprefix("torch.") and verdict["logit_tol_rule"]["unit_roundoff"] == unit_roundoff(dtype)
    assert FP32_LOGIT_TOL < diff <= verdict["logit_tol"]  # rounding differences exist, within the budget
    strict = doctor(hf, tok, logit_tol=FP32_LOGIT_TOL)
    assert not strict["checks"]["logits_match"] and strict["logit_tol_rule"]["rule"] == "given"

    broken = mm.load_model("tiny-llama", dtype=dtype)  # doctor reloads its pristine reference from the spec
    with torch.no_grad():
        hf_model(broken).model.layers[1].mlp.down_proj.weight.zero_()  # a layer's MLP write goes missing
    verdict = doctor(broken)
    assert not verdict["checks"]["logits_match"] and verdict["max_abs_logit_diff"] > verdict["logit_tol"]


def test_the_tolerance_grows_with_depth_and_precision():
    scale = 5.0
    bf16 = [logit_tolerance("bfloat16", n, scale) for n in (2, 16, 32)]
    assert bf16[0] < bf16[1] < bf16[2]
    assert bf16[2] / bf16[0] == pytest.approx((2 * 32 + 2) / (2 * 2 + 2))  # linear in the residual writes
    assert logit_tolerance("float16", 32, scale) == pytest.approx(bf16[2] / 8)  # 3 more mantissa bits
    assert logit_tolerance("float32", 32, scale) == FP32_LOGIT_TOL  # the fp32 budget stays under the floor
