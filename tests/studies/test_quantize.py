"""Fake quantization: hand-computed round trips, exactly the intended weights edited, KV fake-quant."""

from __future__ import annotations

import dataclasses
import importlib.util

import pytest
import torch

from massmech import QKVStats, load_model
from massmech.core.decoder import linears
from massmech.errors import QuantError
from massmech.studies.quant.kv import (
    fake_quant_kv,
    fake_quant_per_sequence,
    kv_hooks,
    quantize_activations,
    quantize_cache,
)
from massmech.studies.quant.methods import (
    bits_per_weight,
    gguf_round_trip,
    quantize_weights,
    rtn,
)
from massmech.studies.quant.preservation import massive_preservation


def test_rtn_hand_computed():
    w = torch.tensor([[1.0, -0.6, 0.334, 2.54]])
    # per channel, 8 bits: scale 2.54/127 = 0.02; w/scale = 50, -30, 16.7, 127 -> 50, -30, 17, 127
    assert torch.allclose(rtn(w, 8), torch.tensor([[1.0, -0.6, 0.34, 2.54]]), atol=1e-6)
    # groups of 2, 4 bits: scales 1/7 and 2.54/7; 7, -4.2 -> 7, -4; 0.92, 7 -> 1, 7
    assert torch.allclose(rtn(w, 4, group_size=2), torch.tensor([[1.0, -4 / 7, 2.54 / 7, 2.54]]), atol=1e-6)
    assert torch.equal(rtn(torch.zeros(2, 4), 4), torch.zeros(2, 4))  # an all-zero row stays zero
    with pytest.raises(QuantError, match=r"does not divide the input width 4; sizes that do: \[2, 4\]"):
        rtn(w, 4, group_size=3)
    with pytest.raises(QuantError, match="bits"):
        rtn(w, 3)


def test_gguf_round_trips_and_bits():
    w = torch.randn(4, 64, generator=torch.Generator().manual_seed(0))
    q8 = gguf_round_trip(w, "Q8_0")
    # Q8_0: q = round(x / d), d = amax / 127 per 32 weights, stored as fp16 (relative error <= 2**-11):
    # |x - q * d16| <= d / 2 + 127 * |d - d16|
    step = w.view(4, 2, 32).abs().amax(-1, keepdim=True) / 127
    bound = step * (0.5 + 127 * 2**-11) * (1 + 1e-6)
    assert ((q8.view(4, 2, 32) - w.view(4, 2, 32)).abs() <= bound).all()
    errs = [float((gguf_round_trip(w, f) - w).norm() / w.norm()) for f in ("Q8_0", "Q5_0", "Q4_1", "Q4_0")]
    assert errs[0] < errs[1] < errs[3] and errs[2] < errs[3]  # fewer bits, more error
    with pytest.raises(QuantError, match="multiple of 32"):
        gguf_round_trip(torch.randn(2, 48), "Q4_0")
    assert [bits_per_weight(m) for m in ("gguf-q8_0", "gguf-q5_0", "gguf-q4_1", "gguf-q4_0")] == [8.5, 5.5, 5.0, 4.5]
    assert bits_per_weight("rtn", 4, 64) == 4.25 and bits_per_weight("rtn", 8, None, 576) == 8 + 16 / 576


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2"])
def test_quantize_weights_edits_exactly_the_decoder_linears(name):
    model = load_model(name)  # a fresh copy: quantization edits it in place
    hf = model.bridge.original_model
    before = {n: p.detach().clone() for n, p in hf.named_parameters()}
    targets = {f"{n}.weight" for n in linears(model)}
    tokens = model.probe_tokens(16)
    report = quantize_weights(model, "rtn", bits=4, group_size=32)
    changed = {n.replace("._original_component", "") for n, p in hf.named_parameters() if not torch.equal(p, before[n])}
    assert changed == targets and all(".layers." in n or ".h." in n for n in changed)
    assert report.bits_per_weight == 4.5 and 0 < report.rel_error < 0.5
    with torch.no_grad():
        assert torch.allclose(model.bridge(tokens), hf(tokens).logits, atol=1e-5)  # the bridge sees the new weights


def test_bad_group_size_changes_nothing():
    model = load_model("tiny-llama")
    hf = model.bridge.original_model
    before = [p.detach().clone() for p in hf.parameters()]
    with pytest.raises(QuantError, match=r"q_proj: group_size 48 does not divide the input width 64; sizes that do"):
        quantize_weights(model, "rtn", bits=4, group_size=48)
    assert all(torch.equal(p, b) for p, b in zip(hf.parameters(), before, strict=True))
    with pytest.raises(QuantError, match="unknown weight method"):
        quantize_weights(model, "awq-ish")
    with pytest.raises(QuantError, match="fixed number of bits"):
        quantize_weights(model, "gguf-q4_0", bits=4)


def test_fake_quant_kv_hand_computed():
    x = torch.tensor([0.0, 0.4, 0.6, 3.0]).view(1, 1, 1, 4)  # [batch, pos, head, d]
    # per token, 2 bits: scale (3 - 0) / 3 = 1, zero 0 -> 0, 0, 1, 3
    assert torch.equal(fake_quant_kv(x, 2, "token"), torch.tensor([0.0, 0.0, 1.0, 3.0]).view(1, 1, 1, 4))
    # per channel = per token on the transposed tensor
    y = torch.randn(2, 8, 3, 4, generator=torch.Generator().manual_seed(1))
    per_channel = fake_quant_kv(y, 4, "channel")
    swapped = fake_quant_kv(y.permute(0, 3, 2, 1), 4, "token").permute(0, 3, 2, 1)
    assert torch.allclose(per_channel, swapped)
    # massive-aware: the kept dim is exact and left out of the range of the others
    m = torch.tensor([0.0, 1.0, 2.0, 100.0]).view(1, 1, 1, 4)
    keep = torch.tensor([[False, False, False, True]])
    assert torch.allclose(fake_quant_kv(m, 2, "token", keep), torch.tensor([0.0, 4 / 3, 2.0, 100.0]).view(1, 1, 1, 4))
    assert torch.allclose(fake_quant_kv(m, 2, "token"), torch.tensor([0.0, 0.0, 0.0, 100.0]).view(1, 1, 1, 4))
    big = torch.randn(2, 8, 3, 4) * 10
    keep = torch.zeros(3, 4, dtype=torch.bool)
    keep[1, 2] = True
    out = fake_quant_kv(big, 2, "channel", keep)
    assert torch.equal(out[:, :, 1, 2], big[:, :, 1, 2]) and not torch.equal(out, big)
    with pytest.raises(QuantError, match="bits"):
        fake_quant_kv(x, 3, "token")


def test_kv_hooks_quantize_the_cached_sites(tiny_models):
    model = tiny_models["tiny-llama"]
    info = model.info
    tokens = model.probe_tokens(24)
    with torch.no_grad():
        clean = model.bridge(tokens)
        with model.bridge.hooks(fwd_hooks=kv_hooks(model, 2)):
            noisy = model.bridge(tokens)
    assert not torch.allclose(clean, noisy)
    keep_all = torch.ones(info.n_layers, info.n_kv_heads, info.d_head, dtype=torch.bool)
    got = model.run_sites(tokens, [("k", "post"), ("v", "pre")], layers=[0])
    with model.bridge.hooks(fwd_hooks=kv_hooks(model, 2, keep_k=keep_all)):
        kept = model.run_sites(tokens, [("k", "post"), ("v", "pre")], layers=[0])
    # layer 0 (its input is not yet touched by quantized V): every K dim kept exact, V quantized
    assert torch.equal(got[("k", "post", 0)], kept[("k", "post", 0)])
    assert not torch.equal(got[("v", "pre", 0)], kept[("v", "pre", 0)])
    with pytest.raises(QuantError, match="keep_k must be"):
        kv_hooks(model, 4, keep_k=keep_all[:, :1])


def _stats(k_sumsq: list[float], q_sumsq: list[float]) -> QKVStats:
    sumsq = {("k", "pre"): torch.tensor([[k_sumsq]], dtype=torch.float64),
             ("q", "pre"): torch.tensor([[q_sumsq]], dtype=torch.float64)}
    zeros = {key: torch.zeros_like(v) for key, v in sumsq.items()}
    return QKVStats(model="hand", layers=(0,), n_tokens=4, n_sequences=1, sumsq=sumsq, total=zeros, max_abs=zeros)


def test_massive_preservation_against_hand_counts():
    # M = sqrt(sumsq): clean K = [10, 1, 1, 1] (mean 3.25: dim 0 massive at lam 2);
    # quantized K = [2, 1, 1, 1] (mean 1.25: dim 0 no longer massive); Q unchanged
    clean, quant = _stats([100, 1, 1, 1], [1, 1, 1, 64]), _stats([4, 1, 1, 1], [1, 1, 1, 64])
    t = massive_preservation(clean, quant, lam=2).set_index("site")
    assert t.loc["k", "n_massive"] == 1 and t.loc["k", "recall"] == 0
    assert t.loc["k", "rel_error_massive"] == pytest.approx(0.8) and t.loc["k", "rel_error_other"] == 0
    assert t.loc["q", "recall"] == 1 and t.loc["q", "rel_error_massive"] == 0
    # a dim with no energy in the clean model (M = 0, as in Gemma-3's zeroed pairs) has no relative error
    dead = massive_preservation(_stats([100, 0, 1, 1], [1, 1, 1, 1]), _stats([100, 1, 4, 1], [1, 1, 1, 1]), lam=2)
    assert dead.set_index("site").loc["k", "rel_error_other"] == pytest.approx(0.5)  # dims 2 and 3: (1 + 0) / 2
    none = massive_preservation(_stats([1, 1, 1, 1], [1, 1, 1, 1]), _stats([1, 1, 1, 1], [1, 1, 1, 1]))
    assert none.recall.isna().all() and none.rel_error_massive.isna().all()
    other = dataclasses.replace(clean, n_tokens=5)
    with pytest.raises(QuantError, match="same tokens"):
        massive_preservation(clean, other)


@pytest.mark.parametrize(("bits", "key_axis", "axis_key"), [(4, "token", 0), (2, "token", 0), (4, "channel", -1), (2, "channel", -1)])
def test_quantize_cache_matches_quantized_cache_quanto(bits, key_axis, axis_key, tiny_models):
    """Greedy generation with our fake-quantized prompt cache == transformers' QuantizedCache (quanto).

    quanto groups ``q_group_size`` consecutive values: with groups of d_head (16) axis 0 is per
    token and head, and with a 16-token prompt axis -1 is per channel over the whole prompt.
    """
    if importlib.util.find_spec("optimum.quanto") is None:
        pytest.fail("optimum-quanto is not installed: `make setup` installs it (extra [dev])")
    from transformers import DynamicCache, QuantizedCache

    hf = tiny_models["tiny-llama"].bridge.original_model  # the HF model: the caches are HF's
    prompt = torch.randint(3, 250, (2, 16), generator=torch.Generator().manual_seed(bits))

    def generate(cache, after_prefill=None):
        logits = []
        with torch.no_grad():
            out = hf(prompt, past_key_values=cache, use_cache=True)
            if after_prefill is not None:
                after_prefill(cache)
            for _ in range(6):
                nxt = out.logits[:, -1:].argmax(-1)
                out = hf(nxt, past_key_values=cache, use_cache=True)
                logits.append(out.logits[:, -1])
        return torch.stack(logits, 1)  # [batch, step, vocab]

    ref = generate(QuantizedCache(backend="quanto", config=hf.config, nbits=bits, axis_key=axis_key,
                                  axis_value=0, q_group_size=16, residual_length=64))
    ours = generate(DynamicCache(config=hf.config),
                    lambda c: quantize_cache(c, bits, key_axis=key_axis, value_axis="token"))
    exact = generate(DynamicCache(config=hf.config))
    assert torch.allclose(ours, ref, atol=1e-5)
    assert not torch.allclose(exact, ref, atol=1e-3)  # the quantization is visible


def test_naive_activation_quantization():
    # one scale for the whole tensor: 127 / 127 = 1 -> the small values round to 0 or 1
    x = torch.tensor([[127.0, 0.4, -0.6, 2.2]])
    assert torch.equal(fake_quant_per_sequence(x), torch.tensor([[127.0, 0.0, -1.0, 2.0]]))
    assert torch.equal(fake_quant_per_sequence(torch.zeros(1, 3)), torch.zeros(1, 3))
    model = load_model("tiny-llama")
    tokens = model.probe_tokens(16)
    with torch.no_grad():
        clean = model.bridge(tokens)
        handles = quantize_activations(model)
        assert len(handles) == len(linears(model))
        noisy = model.bridge(tokens)
        for h in handles:
            h.remove()
        again = model.bridge(tokens)
    assert not torch.equal(clean, noisy) and torch.equal(clean, again)
    with pytest.raises(QuantError, match="8 bits"):
        quantize_activations(model, bits=4)


def test_activation_scales_ignore_batch_mates_and_padding():
    """Issue 14, finding 2: one scale per sequence from its real tokens (it was one max over the batch)."""
    from massmech.causal.batch import batch_masks

    g = torch.Generator().manual_seed(0)
    row = torch.randn(1, 5, 8, generator=g)
    mate = 50 * torch.randn(1, 5, 8, generator=g)  # a batch-mate with far larger activations
    alone = fake_quant_per_sequence(row)
    assert torch.equal(fake_quant_per_sequence(torch.cat([row, mate]))[:1], alone)
    padded = torch.cat([row, 1e3 * torch.ones(1, 2, 8)], 1)  # padding positions hold garbage
    real = torch.tensor([[True] * 5 + [False] * 2])
    assert torch.equal(fake_quant_per_sequence(padded, real=real)[:, :5], alone)
    # through the hooks: the masks announced by the evaluation loop
    model = load_model("tiny-llama")
    tokens = model.probe_tokens(12)
    handles = quantize_activations(model)
    try:
        with torch.no_grad():
            one = model.bridge(tokens)
            pad = torch.cat([tokens, torch.full((1, 4), 3)], 1)
            mask = torch.tensor([[True] * 12 + [False] * 4])
            with batch_masks(mask):
                two = model.bridge(pad, attention_mask=mask.long())
    finally:
        for h in handles:
            h.remove()
    torch.testing.assert_close(two[:, :12], one, rtol=1e-4, atol=1e-4)


def test_per_channel_kv_ranges_come_from_the_prompt_only():
    """Issue 14, finding 8: padding and the scored answer do not widen the per-channel ranges."""
    g = torch.Generator().manual_seed(1)
    k = torch.randn(1, 6, 2, 4, generator=g)
    answer = torch.cat([k, 30 * torch.ones(1, 2, 2, 4)], 1)  # two answer tokens, far out of range
    prompt = torch.tensor([[True] * 6 + [False] * 2])
    exact = fake_quant_kv(k, 4, "channel")
    assert torch.equal(fake_quant_kv(answer, 4, "channel", ranges=prompt)[:, :6], exact)
    assert not torch.equal(fake_quant_kv(answer, 4, "channel")[:, :6], exact)  # the old ranges
