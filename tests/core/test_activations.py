"""Bring your own activations (issue 15): saved Q/K/V give exactly the model-run statistics."""

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import save_file

import massmech as mm
from massmech.core.qkvstats import QKVStats
from massmech.core.rope import RopeSpec
from massmech.errors import CaptureError


def _tokens():
    return torch.randint(1, 200, (3, 24), generator=torch.Generator().manual_seed(2))


@pytest.mark.parametrize("stage", ["pre", "post"])
def test_saved_activations_give_the_model_run_statistics(tmp_path, stage):
    model = mm.load_model("tiny-qwen2")
    tokens = _tokens()
    keys = [("q", stage), ("k", stage), ("v", "pre")]
    acts = model.run_sites(tokens, keys)
    layers = list(range(model.info.n_layers))
    files = {}
    for (site, _), fmt in zip(keys, ("safetensors", "pt", "npy"), strict=True):
        files[site] = []
        for layer in layers:
            x = acts[(site, dict(keys)[site], layer)].transpose(1, 2).contiguous()  # saved as [b, h, t, d]
            path = tmp_path / f"{site}{layer}.{fmt}"
            if fmt == "safetensors":
                save_file({"x": x}, path)
            elif fmt == "pt":
                torch.save(x, path)
            else:
                np.save(path, x.numpy())
            files[site].append(str(path))
    mine = QKVStats.from_activations(files, axes="bhtd", stage=stage, layers=layers,
                                     rope=RopeSpec.from_hf_config(mm.core.bridge.hf_model(model).config))
    ref = mm.capture_stats(model, tokens, sites=("q", "k", "v"), stages=(stage,) if stage == "pre" else None,
                           batch_size=len(tokens), progress=False)
    for key in mine.keys():  # the capture sums each batch in fp32 before adding in fp64: equal to fp32 rounding
        torch.testing.assert_close(mine.sumsq[key], ref.sumsq[key], rtol=1e-6, atol=1e-8)
        assert torch.equal(mine.max_abs[key], ref.max_abs[key])
    assert mine.n_tokens == ref.n_tokens == 72
    a, b = mm.detect_massive(mine, lam=1.15), mm.detect_massive(ref, lam=1.15)  # random weights: low lambda
    cols = ["site", "stage", "layer", "head", "dim"]
    b = b[[(site, st) in mine.keys() for site, st in zip(b.site, b.stage, strict=True)]]
    assert len(a) > 0
    pd.testing.assert_frame_equal(a[cols].reset_index(drop=True), b[cols].reset_index(drop=True))
    fa = mm.frequency_analysis(mine, context_len=24)  # the spec from the config serves the bands
    assert set(fa.layers.site) == {"q", "k", "v"}


def test_streaming_chunks_and_masks_add_up():
    model = mm.load_model("tiny-llama")
    tokens = _tokens()
    acts = model.run_sites(tokens, [("k", "pre")], layers=[1])[("k", "pre", 1)]
    spec = RopeSpec.from_base(10_000, model.info.d_head)
    whole = QKVStats.from_activations({"k": acts}, layers=[1], rope=spec)
    parts = QKVStats.from_activations(({"k": acts[i : i + 1]} for i in range(3)), layers=[1], rope=spec)
    torch.testing.assert_close(whole.sumsq[("k", "pre")], parts.sumsq[("k", "pre")])
    assert parts.n_sequences == 3 and parts.layers == (1,) and parts.rope.n_layers == 2  # label 1 served
    mask = torch.ones(3, 24, dtype=torch.bool)
    mask[:, 20:] = False
    cut = QKVStats.from_activations({"k": acts}, layers=[1], mask=mask)
    short = QKVStats.from_activations({"k": acts[:, :20]}, layers=[1])
    torch.testing.assert_close(cut.sumsq[("k", "pre")], short.sumsq[("k", "pre")])


def test_wrong_axes_and_dims_are_clear_errors(tmp_path):
    q = torch.randn(2, 10, 8, 16)  # [b, t, h, d]
    k = torch.randn(2, 10, 2, 16)
    spec = RopeSpec.from_base(10_000, 16)
    with pytest.raises(CaptureError, match="head dim 16 on its last axis, the RoPE spec d_head=32"):
        QKVStats.from_activations({"q": q}, rope=RopeSpec.from_base(10_000, 32))
    with pytest.raises(CaptureError, match="has 4 axes .* declares 3"):
        QKVStats.from_activations({"q": q}, axes="thd", rope=spec)
    with pytest.raises(CaptureError, match="disagree on \\(batch, tokens\\)"):  # q saved [b, h, t, d], read as bthd
        QKVStats.from_activations({"q": q.transpose(1, 2), "k": k}, axes="bthd", rope=spec)
    with pytest.raises(CaptureError, match="expected 8"):
        QKVStats.from_activations({"q": q.transpose(1, 2)}, axes="bthd", n_heads={"q": 8})
    with pytest.raises(CaptureError, match="mask has shape"):
        QKVStats.from_activations({"q": q}, mask=torch.ones(2, 9, dtype=torch.bool))
    with pytest.raises(CaptureError, match="keyed by"):
        QKVStats.from_activations({"query": q})
    with pytest.raises(CaptureError, match="no activation file"):
        QKVStats.from_activations({"q": str(tmp_path / "missing.pt")})


def test_analyze_cli_on_saved_activations(tmp_path, capsys):
    import json

    from massmech.cli import main

    model = mm.load_model("tiny-llama")
    acts = model.run_sites(_tokens(), [("q", "post"), ("k", "post")], layers=[1])
    paths = []
    for site in ("q", "k"):
        path = tmp_path / f"{site}.safetensors"
        save_file({"x": acts[(site, "post", 1)].contiguous()}, path)
        paths.append(f"{site}={path}")
    base = model.rope.base(1)
    out = tmp_path / "run"
    args = ["analyze", "--activations", ",".join(paths), "--rope-base", str(base), "--d-head", str(model.info.d_head),
            "--axes", "bthd", "--stage", "post", "--layer", "1", "--lam", "1.15", "--json", "--out", str(out)]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["n_tokens"] == 72 and summary["context_len"] == 24 and set(summary["by_stage"]) == {"q.post", "k.post"}
    for name in ("stats.npz", "massive.parquet", "pairs.parquet", "layers.parquet", "manifest.json", "summary.json",
                 "figures/heatmap.pdf", "figures/spectrum.png"):
        assert (out / name).is_file(), name
    assert mm.QKVStats.load(out / "stats.npz").layers == (1,)
    assert main([*args[:-2], "--out", str(tmp_path / "bad"), "--d-head", "32"]) == 2  # clean error, no folder
    assert "d_head=32" in capsys.readouterr().err and not (tmp_path / "bad").exists()


def test_analyze_on_saved_activations_predicts_the_band_from_a_cited_training_context(tmp_path, capsys):
    import json

    import pandas as pd

    from massmech.cli import main

    model = mm.load_model("tiny-llama")
    acts = model.run_sites(_tokens(), [("q", "pre"), ("k", "pre")], layers=[0])
    paths = []
    for site in ("q", "k"):
        save_file({"x": acts[(site, "pre", 0)].contiguous()}, tmp_path / f"{site}.safetensors")
        paths.append(f"{site}={tmp_path / f'{site}.safetensors'}")
    args = ["analyze", "--activations", ",".join(paths), "--rope-base", str(model.rope.base(0)), "--d-head",
            str(model.info.d_head), "--stage", "pre", "--lam", "1.15", "--json", "--train-context", "64"]
    assert main([*args, "--out", str(tmp_path / "nosource")]) == 2  # a context without its source: refused
    assert "train_context_source" in capsys.readouterr().err and not (tmp_path / "nosource").exists()
    out = tmp_path / "run"
    assert main([*args, "--train-context-source", "a made-up test value", "--out", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["train_context"] == {"tokens": 64, "source": "a made-up test value"}
    predicted = pd.read_parquet(out / "predicted.parquet")
    k_star = model.rope.critical_pair(64, layer=0)
    assert set(predicted.site) == {"q", "k"} and predicted.critical_pair.iloc[0] == pytest.approx(k_star)
    assert mm.FrequencyAnalysis.from_run(out).predicted is not None
    assert "critical_hit_rate" in summary["by_stage"]["q.pre"]
