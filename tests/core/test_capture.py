import copy

import numpy as np
import pytest
import torch

import massmech as mm

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Massive values sit in the low-frequency pairs.",
    "short",
    "A much longer sentence that forces padding in every batch it lands in, by design.",
    "ok",
]


def _all_keys(model):
    return [(s, st) for s in ("q", "k", "v") for st in model.stages(s)]


def test_capture_equals_run_with_cache_reduction(tiny):
    tokens = tiny.tokenize(TEXTS[0])[0]
    ids = torch.tensor([tokens])
    stats = mm.capture_stats(tiny, ids, progress=False)
    names = {}
    for key in _all_keys(tiny):
        for layer in range(tiny.info.n_layers):
            names[tiny.hook_name(key[0], key[1], layer)[0]] = (key, layer)
    _, cache = tiny.bridge.run_with_cache(ids, names_filter=lambda n: n in names)
    for name, (key, layer) in names.items():
        x = cache[name].double()
        if tiny.hook_name(key[0], key[1], layer)[1]:
            x = x.transpose(1, 2)
        x = x.flatten(0, 1)  # [tokens, head, d]
        torch.testing.assert_close(stats.norm(*key)[layer], x.pow(2).sum(0).sqrt(), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(stats.mean(*key)[layer], x.mean(0), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(stats.maxabs(*key)[layer], x.abs().amax(0), rtol=1e-6, atol=1e-7)
    assert stats.n_tokens == len(tokens) and stats.n_sequences == 1
    assert set(stats.keys()) == set(_all_keys(tiny))


def test_batched_with_padding_equals_unbatched(tiny):
    one = mm.capture_stats(tiny, TEXTS, batch_size=1, progress=False)
    many = mm.capture_stats(tiny, TEXTS, batch_size=3, progress=False)
    assert one.n_tokens == many.n_tokens == sum(len(t) for t in tiny.tokenize(TEXTS))
    for key in one.keys():
        torch.testing.assert_close(many.sumsq[key], one.sumsq[key], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(many.total[key], one.total[key], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(many.max_abs[key], one.max_abs[key], rtol=1e-5, atol=1e-6)


def test_exclude_first_token(tiny_models):
    model = tiny_models["tiny-llama"]
    seqs = model.tokenize(TEXTS)
    full = mm.capture_stats(model, [s[1:] for s in seqs if len(s) > 1], progress=False)
    excl = mm.capture_stats(model, seqs, exclude_first_token=True, batch_size=2, progress=False)
    assert excl.n_tokens == sum(len(s) - 1 for s in seqs)
    # Dropping the first token from the *statistics* is not dropping it from the *input*:
    # later tokens still attend to it, so the two captures must differ.
    assert not torch.allclose(excl.sumsq[("q", "pre")], full.sumsq[("q", "pre")])
    single = mm.capture_stats(model, [seqs[0]], progress=False)
    manual = model.run_sites(torch.tensor([seqs[0]]), [("k", "post")])
    ref = manual[("k", "post", 1)][0, 1:].double().pow(2).sum(0)
    excl_one = mm.capture_stats(model, [seqs[0]], exclude_first_token=True, progress=False)
    torch.testing.assert_close(excl_one.sumsq[("k", "post")][1], ref, rtol=1e-5, atol=1e-6)
    assert excl_one.n_tokens == single.n_tokens - 1


def test_layers_subset(tiny_models):
    model = tiny_models["tiny-gemma3"]
    full = mm.capture_stats(model, TEXTS[:2], progress=False)
    sub = mm.capture_stats(model, TEXTS[:2], layers=[2], sites=["k"], stages=["post"], progress=False)
    assert sub.keys() == [("k", "post")] and sub.layers == (2,)
    torch.testing.assert_close(sub.sumsq[("k", "post")][0], full.sumsq[("k", "post")][2])


def test_save_load_roundtrip(tiny_models, tmp_path):
    stats = mm.capture_stats(tiny_models["tiny-gemma3"], TEXTS, progress=False)
    path = stats.save(tmp_path / "s.npz")
    back = mm.QKVStats.load(path)
    assert back.keys() == stats.keys() and back.rope == stats.rope and back.n_tokens == stats.n_tokens
    for key in stats.keys():
        assert torch.equal(back.sumsq[key], stats.sumsq[key])
    frame = stats.to_frame()
    n_rows = sum(t.numel() for t in stats.sumsq.values())
    assert len(frame) == n_rows and {"site", "stage", "layer", "head", "dim", "M"} <= set(frame)
    assert np.allclose(frame.M, np.sqrt(np.concatenate([t.numpy().ravel() for t in stats.sumsq.values()])))


def test_bad_input(tiny_models):
    model = tiny_models["tiny-llama"]
    with pytest.raises(mm.CaptureError, match="empty corpus"):
        mm.capture_stats(model, [], progress=False)
    with pytest.raises(mm.CaptureError, match="context"):
        mm.capture_stats(model, [[1] * (model.info.n_ctx + 1)], progress=False)
    with pytest.raises(mm.CaptureError, match="context"):  # tensors are checked like lists
        mm.capture_stats(model, torch.ones(1, model.info.n_ctx + 1, dtype=torch.long), progress=False)
    with pytest.raises(mm.CaptureError, match="empty corpus"):
        mm.capture_stats(model, torch.ones(0, 3, dtype=torch.long), progress=False)
    with pytest.raises(mm.CaptureError, match="unknown site"):
        mm.capture_stats(model, TEXTS, sites=["o"], progress=False)
    with pytest.raises(mm.CaptureError, match="out of range"):
        mm.capture_stats(model, TEXTS, layers=[9], progress=False)
    with pytest.raises(mm.CaptureError, match="no stage 'post'"):
        mm.capture_stats(tiny_models["tiny-gpt2"], TEXTS, stages=["post"], progress=False)
    with pytest.raises(mm.CaptureError, match="no stage 'post'"):
        mm.capture_stats(model, TEXTS, sites=["v"], stages=["post"], progress=False)


def test_nan_activations_are_an_error(tiny_models):
    hf = copy.deepcopy(tiny_models["tiny-llama"].bridge.original_model)
    with torch.no_grad():
        hf.model.layers[1].self_attn.k_proj.weight[0, 0] = float("nan")
    broken = mm.wrap(hf, tiny_models["tiny-llama"].tokenizer, name="broken")
    with pytest.raises(mm.CaptureError, match="non-finite.*site k.*layers \\[1\\]"):
        mm.capture_stats(broken, TEXTS[:2], sites=["k"], progress=False)


def test_hook_that_never_fires_is_an_error(tiny_models, monkeypatch):
    model = mm.wrap(tiny_models["tiny-llama"].bridge)
    # hook_hidden_states is registered on this bridge but never fires on Llama.
    monkeypatch.setattr(model, "hook_name", lambda site, stage, layer: (f"blocks.{layer}.attn.hook_hidden_states", False))
    with pytest.raises(mm.CaptureError, match="did not fire exactly once.*hook_hidden_states"):
        mm.capture_stats(model, TEXTS[:1], sites=["q"], stages=["pre"], progress=False)
