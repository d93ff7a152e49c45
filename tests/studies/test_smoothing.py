"""SmoothQuant and AWQ: function-preserving folding, and agreement with llmcompressor on a tiny Llama."""

from __future__ import annotations

import tempfile

import pytest
import torch

from massmech.core.decoder import blocks as decoder_blocks
from massmech.core.loading import load_hf
from massmech.errors import SmoothingError
from massmech.studies.quant.methods import rtn
from massmech.studies.quant.smoothing import (
    awq,
    block_maps,
    smoothing_names,
    smoothquant,
)

CALIB = torch.randint(0, 200, (4, 32), generator=torch.Generator().manual_seed(0)).tolist()


def _logits(hf, ids):
    with torch.no_grad():
        return hf(input_ids=torch.tensor(ids)).logits


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-qwen2", "tiny-gemma3"])
@pytest.mark.parametrize("method", ["smoothquant", "awq"])
def test_folding_keeps_the_function_and_moves_weights(name, method):
    hf, *_ = load_hf(name)
    before = {k: v.clone() for k, v in hf.state_dict().items()}
    ref = _logits(hf, CALIB)
    if method == "smoothquant":
        smoothquant(hf, CALIB, alpha=0.8)
    else:
        awq(hf, CALIB, lambda w: rtn(w, 4, 16), group_size=16, fold_only=True)
    assert torch.allclose(_logits(hf, CALIB), ref, atol=1e-4, rtol=1e-4)
    changed = {k for k, v in hf.state_dict().items() if not torch.equal(v, before[k])}
    norms = {f"model.{n}" for n in smoothing_names(hf, awq=method == "awq")}
    if method == "smoothquant":  # always rescales: every mapping's norm moved
        assert {n for n in norms if "norm" in n} <= changed
    else:
        assert changed  # the search picked a non-identity scale somewhere
    linears = {n for n in changed if n.endswith("proj.weight")}
    assert changed <= linears | norms


def test_gemma3_maps_use_the_mlp_input_norm_and_gpt2_is_refused():
    hf, *_ = load_hf("tiny-gemma3")
    maps = block_maps(decoder_blocks(hf)[0], awq=False)
    assert [m.smooth for m in maps] == ["input_layernorm", "pre_feedforward_layernorm"]
    assert "input_layernorm" not in [m.smooth for m in block_maps(decoder_blocks(hf)[0], awq=True)]
    gpt2, *_ = load_hf("tiny-gpt2")
    with pytest.raises(SmoothingError, match="Llama/Qwen2/Gemma-3"):
        smoothquant(gpt2, CALIB)


# --------------------------------------------------------------- against llmcompressor
llmc = pytest.importorskip("llmcompressor", reason="install massmech[quant]")


def _library(recipe):
    from datasets import Dataset
    from llmcompressor import oneshot

    hf, tok, *_ = load_hf("tiny-llama")
    ds = Dataset.from_dict({"input_ids": CALIB, "attention_mask": [[1] * len(w) for w in CALIB]})
    with tempfile.TemporaryDirectory() as tmp:
        hf.config.save_pretrained(tmp)
        hf.config._name_or_path = tmp
        oneshot(model=hf, processor=tok, dataset=ds, recipe=recipe, num_calibration_samples=len(CALIB),
                max_seq_length=32, batch_size=1)
    return hf


@pytest.mark.parametrize("alpha", [0.5, 0.8])
def test_smoothquant_equals_llmcompressor(alpha):
    from llmcompressor.modifiers.smoothquant import SmoothQuantModifier

    lib = _library([SmoothQuantModifier(smoothing_strength=alpha)]).state_dict()
    hf, *_ = load_hf("tiny-llama")
    smoothquant(hf, CALIB, alpha=alpha)
    ours = hf.state_dict()
    factor = 2.0 ** (2 * alpha - 1)  # llmcompressor divides by 2 max|W|: a constant the quantizers do not see
    for name in smoothing_names(hf, awq=False):
        key = f"model.{name}"
        assert torch.allclose(ours[key], lib[key] * factor, rtol=1e-5, atol=1e-7), key
    for i in range(2):
        key = f"model.layers.{i}.self_attn.q_proj.weight"
        assert torch.allclose(ours[key], lib[key] / factor, rtol=1e-5, atol=1e-7)


def _lib_scales(lib, clean, maps: dict[str, tuple[str, ...]]) -> dict[str, torch.Tensor]:
    """The scale llmcompressor folded into each mapping, read off its weights against the clean model's.

    A norm is divided by its mapping's scale; ``up_proj``'s output rows are divided by its own
    and its input columns multiplied by the MLP norm's."""
    out = {}
    for key in maps:
        layer, smooth = key.split(".", 2)[1], key.split(".", 2)[2]
        name = f"model.layers.{layer}.{smooth}.weight"
        w0, w1 = clean.state_dict()[name].float(), lib.state_dict()[name].float()
        if smooth.endswith("norm"):
            out[key] = w0 / w1
        else:  # up_proj: w1[i, c] = w0[i, c] * s_mlp[c] / s_up[i]
            s_mlp = out[f"layers.{layer}.post_attention_layernorm"]
            out[key] = ((w0 * s_mlp[None, :]) / w1).median(dim=1).values
    return out


@pytest.mark.parametrize("symmetric", [True, False], ids=["symmetric", "asymmetric"])
def test_awq_matches_llmcompressor(symmetric):
    """Both pick the same scale in every mapping, up to the numerical noise of the loss.

    compressed-tensors' symmetric int4 grid maps each group's largest weight to exactly +-7.5, a
    rounding tie: which way it rounds depends on the last bit of ``w * s``, and so on the SIMD
    kernels of the CPU (ATEN_CPU_CAPABILITY=default flips a choice that AVX-512 makes). So the
    test requires llmcompressor's scale to be one of our grid's candidates, and its loss (ours)
    to be within the loss noise of our best candidate's: the same choice wherever the loss gap
    is above that noise. The asymmetric grid has no ties by construction; there the noise is
    about 1e-4 of the loss and every mapping must choose alike.
    """
    pytest.importorskip("compressed_tensors")
    import llmcompressor.pipelines.cache as cache
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
    from compressed_tensors.quantization.lifecycle.forward import fake_quantize
    from compressed_tensors.quantization.utils import calculate_qparams
    from llmcompressor.modifiers.awq import AWQModifier

    g = 16
    args = QuantizationArgs(num_bits=4, type="int", symmetric=symmetric, strategy="group", group_size=g)
    # llmcompressor's AWQ pins its activation cache, which needs an accelerator: a no-op on CPU
    mp = pytest.MonkeyPatch()
    mp.setattr(cache.IntermediatesCache, "pin_memory", lambda self, *a, **k: None)
    try:
        lib = _library([AWQModifier(config_groups={"g": QuantizationScheme(targets=["Linear"], weights=args)}, ignore=["lm_head"])])
    finally:
        mp.undo()

    def libq(w):  # the library's int4 grid, so that only the algorithms are compared
        x = w.reshape(w.shape[0], -1, g)
        scale, zero = calculate_qparams(x.amin(-1), x.amax(-1), args)
        return fake_quantize(w, scale, zero, args)

    hf, *_ = load_hf("tiny-llama")
    clean, *_ = load_hf("tiny-llama")
    trace = {}
    ratios = awq(hf, CALIB, libq, group_size=g, trace=trace)
    assert any(r != -1.0 for r in ratios.values())  # not the identity everywhere
    theirs = _lib_scales(lib, clean, trace)
    same = set()
    for key, found in trace.items():
        miss = ((found.scales / theirs[key][None, :]) - 1).abs().amax(-1)  # per candidate
        j = int(miss.argmin())
        assert miss[j] < 1e-3, f"{key}: llmcompressor's scale is none of our candidates (closest {float(miss[j]):.2g})"
        gap = found.losses[j] - found.losses[found.best]
        noise = found.noise[j] + found.noise[found.best] + 1e-6 * found.losses[found.best]
        assert gap <= noise, f"{key}: llmcompressor's choice (r={found.ratios[j]:.3f}) costs {gap:.3g} more than ours " \
                             f"(r={found.ratios[found.best]:.3f}), beyond the loss noise {noise:.3g}"
        if j == found.best:
            same.add(key)
    assert same, "no mapping chose the same scale on both sides: the comparison says nothing"
    # a linear's quantized weights depend on every mapping it is in: as a balance layer and as a smooth one
    touching = {f"layers.{i}.{m}": {f"layers.{i}.{s}" for s, ms in
                                      (("input_layernorm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
                                       ("post_attention_layernorm", ("mlp.gate_proj", "mlp.up_proj")),
                                       ("mlp.up_proj", ("mlp.down_proj", "mlp.up_proj"))) if m in ms}
                for i in range(2) for m in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                            "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")}
    compared = 0
    for name, mod in lib.named_modules():
        if hasattr(mod, "weight_scale") and touching.get(name.removeprefix("model."), {None}) <= same:
            compared += 1
            w_lib = fake_quantize(mod.weight, mod.weight_scale, mod.weight_zero_point, mod.quantization_scheme.weights)
            w_ours = hf.get_submodule(name).weight
            w0 = clean.get_submodule(name).weight
            assert float((w_ours - w_lib).norm() / w_lib.norm()) < 0.03, name
            assert float((w_lib - w0).norm() / w0.norm()) > 0.05  # the comparison is not vacuous
    assert compared, "no layer's weights were compared"
