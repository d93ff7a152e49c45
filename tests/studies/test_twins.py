"""Controlled twins: shared init, no rotation without RoPE, data, resumption, the tiny contrast."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

import massmech as mm
from massmech.cli import main
from massmech.core.positions import MECHANISMS
from massmech.core.tiny import byte_tokenizer_dir
from massmech.core.twin import (
    build_twin,
    initial_weights,
    load_twin,
    twin_config,
)
from massmech.errors import CorpusError, RopeError, TwinError
from massmech.studies.twins import data as twin_data
from massmech.studies.twins.config import TwinsConfig, Variant, preset
from massmech.studies.twins.study import load_tables, train_all
from massmech.studies.twins.train import (
    checkpoint_dirs,
    learning_rate,
    prepare,
    train_variant,
)

# A few seconds of training: 2 layers, d_model 32, context 32, 4 rows per step.
SMALL = TwinsConfig(
    d_model=32, n_layers=2, n_heads=2, d_mlp=64, context=32, batch_size=4, steps=12, warmup=3,
    vocab_size=300, checkpoints=(0, 6, 12), analysis_tokens=256, eval_examples=4,
)


def _byte_tok():
    import transformers as tf

    return tf.PreTrainedTokenizerFast.from_pretrained(byte_tokenizer_dir())


@pytest.fixture(scope="module")
def twins():
    tok = _byte_tok()
    cfgs = {m: twin_config(m, vocab_size=len(tok), d_model=32, n_layers=2, n_heads=2, d_mlp=64, max_positions=64) for m in MECHANISMS}
    init = initial_weights(cfgs["rope"], seed=0)
    return {m: build_twin(c, init, position_seed=1).eval() for m, c in cfgs.items()}, tok


def test_twins_share_initial_weights(twins):
    models, _ = twins
    states = {m: model.state_dict() for m, model in models.items()}
    shared = set(states["rope"])
    assert set(states["nope"]) == shared
    assert set(states["absolute"]) - shared == {"model.embed_positions.weight"}
    for name in shared:
        assert torch.equal(states["rope"][name], states["absolute"][name]), name
        assert torch.equal(states["rope"][name], states["nope"][name]), name
    # ...and another seed gives other weights
    other = initial_weights(models["rope"].config, seed=1)
    assert not torch.equal(other["model.layers.0.self_attn.q_proj.weight"], states["rope"]["model.layers.0.self_attn.q_proj.weight"])


def test_no_rotation_without_rope_and_bridge_matches_hf(twins):
    models, tok = twins
    ids = torch.randint(3, 250, (2, 40), generator=torch.Generator().manual_seed(0))
    for mech, model in models.items():
        lm = mm.wrap(model, tok, name=f"twin-{mech}")
        with torch.no_grad():
            assert torch.allclose(lm.bridge(ids), model(ids).logits, atol=1e-5), mech
        acts = lm.run_sites(ids, [("q", "pre"), ("q", "post"), ("k", "pre"), ("k", "post")])
        for site in ("q", "k"):
            for layer in range(2):
                pre, post = acts[(site, "pre", layer)], acts[(site, "post", layer)]
                same_norms = torch.equal(pre.norm(dim=1), post.norm(dim=1))  # per-dim norms over positions
                assert same_norms == (mech != "rope"), (mech, site, layer)
        assert lm.has_rope == (mech == "rope")
        if mech != "rope":
            with pytest.raises(RopeError, match="identity"):
                _ = lm.rope


def test_absolute_twin_uses_its_positions(twins):
    models, _ = twins
    model = models["absolute"]
    ids = torch.randint(3, 250, (1, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        before = model(ids).logits
        saved = model.model.embed_positions.weight.clone()
        model.model.embed_positions.weight.zero_()
        after = model(ids).logits
        model.model.embed_positions.weight.copy_(saved)
        assert not torch.allclose(before, after)
        with pytest.raises(TwinError, match="learned positions"):
            model(torch.zeros(1, 65, dtype=torch.long))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    tok, corpus = prepare(SMALL, tmp_path_factory.mktemp("twins-data"))
    return tok, corpus


def test_batches_are_a_function_of_seed_and_step(corpus):
    _, c = corpus
    kw = dict(batch_size=8, length=33, synthetic_share=0.5)
    a = twin_data.batch(c, seed=0, step=5, **kw)
    assert a.shape == (8, 33) and a.dtype == torch.int64
    assert torch.equal(a, twin_data.batch(c, seed=0, step=5, **kw))
    assert not torch.equal(a, twin_data.batch(c, seed=0, step=6, **kw))
    assert not torch.equal(a, twin_data.batch(c, seed=1, step=5, **kw))


def test_in_context_sequences_are_predictable_from_context(corpus):
    _, c = corpus
    sp = c.special
    rng = np.random.default_rng(0)
    toks, scored = twin_data.synthetic("repeat", c, rng, 64)
    for t in np.flatnonzero(scored):  # each scored token repeats the token one span earlier
        sep = max(i for i in range(t) if toks[i] == sp["<sep>"])
        start = max([i for i in range(sep) if toks[i] == sp["<eos>"]], default=-1) + 1
        assert toks[t] == toks[start + (t - sep - 1)]
    toks, scored = twin_data.synthetic("kv", c, rng, 64)
    for t in np.flatnonzero(scored):  # value after "<q> key" = value after "<key> key"
        assert toks[t - 2] == sp["<q>"]
        i = max(i for i in range(t) if toks[i] == sp["<key>"] and toks[i + 1] == toks[t - 1])
        assert toks[t] == toks[i + 2]
    toks, scored = twin_data.synthetic("passkey", c, rng, 64)
    key_at = int(np.flatnonzero(toks == sp["<key>"])[0])
    assert scored.sum() == twin_data.PASSKEY_LEN and toks[-twin_data.PASSKEY_LEN - 1] == sp["<q>"]
    assert (toks[scored] == toks[key_at + 1 : key_at + 1 + twin_data.PASSKEY_LEN]).all()
    with pytest.raises(CorpusError, match="unknown in-context kind"):
        twin_data.synthetic("copy", c, rng, 64)


def test_resume_gives_the_uninterrupted_trajectory(tmp_path):
    full = train_variant(SMALL, "rope", tmp_path / "a", progress=False)
    assert [r["step"] for r in full] == list(range(1, 13))
    assert sorted(checkpoint_dirs(tmp_path / "a", Variant("rope"))) == [0, 6, 12]
    part = train_variant(SMALL, "rope", tmp_path / "b", stop_at=7, progress=False)  # dies after step 7
    assert len(part) == 7 and sorted(checkpoint_dirs(tmp_path / "b", Variant("rope"))) == [0, 6]
    resumed = train_variant(SMALL, "rope", tmp_path / "b", progress=False)  # resumes from step 6
    assert resumed == full
    a = load_twin(tmp_path / "a/checkpoints/rope/step_000012").state_dict()
    b = load_twin(tmp_path / "b/checkpoints/rope/step_000012").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_parallel_workers_train_like_one_process(tmp_path):
    """Variants trained as separate worker processes equal the in-process run, bit for bit."""
    cfg = SMALL.replace(steps=4, checkpoints=(4,))
    par = train_all(cfg, tmp_path / "par", workers=2, variants=["rope", "absolute"], progress=False)
    trainer = tmp_path / "par" / "checkpoints" / "rope" / "step_000004" / "trainer.pt"
    stamp = trainer.stat().st_mtime_ns
    again = train_all(cfg, tmp_path / "par", workers=2, variants=["rope", "absolute"], progress=False)
    assert trainer.stat().st_mtime_ns == stamp  # the rerun found both variants trained in its cells
    seq = train_all(cfg, tmp_path / "seq", workers=1, variants=["rope", "absolute"], progress=False)
    assert par == seq == again and len(par["absolute"]) == 4
    from massmech.infra.study import store_of
    from massmech.studies.twins.study import TWINS_STUDY

    store = store_of(TWINS_STUDY, tmp_path / "par" / "cells")  # the training cells, in the twins' one store
    trained = [store.get(k).data for k in store.keys()]
    assert sorted(d["variant"] for d in trained if "step" not in d) == ["absolute", "rope"]
    loaded = load_twin(tmp_path / "par" / "checkpoints" / "absolute" / "step_000004")
    assert loaded.config.position == "absolute" and loaded.model.embed_positions is not None
    assert load_twin(tmp_path / "par" / "checkpoints" / "rope" / "step_000004").config.position == "rope"


def test_bad_input(tmp_path):
    with pytest.raises(TwinError, match="unknown position mechanism"):
        Variant("alibi")
    with pytest.raises(TwinError, match="unknown preset"):
        preset("huge")
    with pytest.raises(TwinError, match="three twins"):
        SMALL.replace(variants=(Variant("rope"),))
    with pytest.raises(CorpusError, match="max_epochs"):
        prepare(SMALL.replace(steps=10**6, checkpoints=()), tmp_path / "big")
    assert not (tmp_path / "big" / "config.json").exists()
    prepare(SMALL, tmp_path / "run")
    with pytest.raises(TwinError, match="different config.*'lr'.*--overwrite"):
        train_variant(SMALL.replace(lr=1e-2), "rope", tmp_path / "run", progress=False)
    (tmp_path / "run" / "notes.txt").write_text("mine")  # a user's file stays, whatever the flags
    prepare(SMALL.replace(lr=1e-2), tmp_path / "run", overwrite=True)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["lr"] == 1e-2
    assert (tmp_path / "run" / "notes.txt").read_text() == "mine"
    assert learning_rate(SMALL, SMALL.steps) == pytest.approx(SMALL.lr * SMALL.min_lr_ratio)
    with pytest.raises(SystemExit) as exit_:  # the CLI's choices name the presets
        main(["twins", "--preset", "huge", "--out", str(tmp_path / "x")])
    assert exit_.value.code == 2


def test_config_json_round_trip():
    for name in ("tiny", "demo", "paper"):
        cfg = preset(name)
        assert TwinsConfig.from_dict(json.loads(cfg.to_json())) == cfg


@pytest.mark.xdist_group("tiny-twins")
def test_tiny_preset_shows_the_rope_contrast(tmp_path, tiny_twins_run):
    """The tiny preset, through the CLI: RoPE's later-layer K concentrates, V does not."""
    import shutil

    run, summary = tiny_twins_run
    shutil.copytree(run, tmp_path / "t")  # the shared run stays as trained; its cells are removed below
    r = summary["twins"]
    assert set(r) == set(MECHANISMS) and all(set(v) == {"q", "k", "v"} for v in r.values())
    assert r["rope"]["k"] > 1.3 * r["absolute"]["k"]
    assert r["rope"]["k"] > 1.3 * r["rope"]["v"]
    assert abs(math.log(r["rope"]["v"] / r["absolute"]["v"])) < math.log(1.3)  # V flat: within 1.3x
    analysis = tmp_path / "t" / "analysis"
    for name in ("trajectory", "bands", "scores", "disruption", "wavelength", "train_log", "matched_accuracy"):
        assert (analysis / f"{name}.parquet").is_file()
    # concentration at matched in-context accuracy: each twin read where it first reaches a level all reach
    m = summary["matched_accuracy"]
    assert set(m) == {"level", *MECHANISMS} and 0 < m["level"] <= 1
    ma = pd.read_parquet(analysis / "matched_accuracy.parquet")
    assert (ma.accuracy >= ma.level - 1e-9).all() and set(ma.site) == {"q", "k", "v"}
    for fig in ("twins_trajectory", "twins_bands", "twins_disruption"):
        assert (analysis / f"{fig}.pdf").is_file() and (analysis / f"{fig}.png").is_file()
    index = json.loads((analysis / "checkpoints.json").read_text())
    assert set(index) == set(MECHANISMS) and set(index["rope"]) == {"0", "100", "300"}
    assert (tmp_path / "t" / index["nope"]["300"] / "manifest.json").is_file()
    tables = load_tables(tmp_path / "t")
    assert set(tables["trajectory"].step) == {0, 100, 300}
    assert set(tables["disruption"].condition) == {"baseline", "massive", "matched", "random"}

    # the checkpoint analyses are cells: recomputed in worker processes, they give the same tables
    from massmech.infra.executors import ProcessExecutor
    from massmech.studies.twins.study import checkpoint_tables
    shutil.rmtree(tmp_path / "t" / "cells")
    traj, bands, scores = checkpoint_tables(preset("tiny"), tmp_path / "t",
                                            executor=ProcessExecutor(workers=2, threads=1), progress=False)
    for name, table in (("trajectory", traj), ("bands", bands), ("scores", scores)):
        pd.testing.assert_frame_equal(table, tables[name], check_like=True, obj=name)


def test_twin_disruption_rows_are_distinct_examples_with_prompt_only_statistics():
    """Issue 14, finding 10: per-example random controls (ids were 0..15 in every batch) and
    statistics from the prompt only (they included the scored answer)."""
    import torch

    from massmech.studies.twins.measures import prompt_mask, row_values

    toks = torch.arange(40 * 6).view(40, 6) % 50
    scored = torch.zeros(40, 6, dtype=torch.bool)
    scored[:, 4:] = True
    seen = []

    def forward(x, prompt, rows):
        seen.append((prompt.clone(), rows.clone()))
        return torch.zeros(len(x), x.shape[1], 50)

    row_values(forward, {"natural": (toks, scored), "copy": (toks, scored)}, batch_size=16)
    ids = torch.cat([r for _, r in seen])
    assert len(ids) == 80 and len(set(ids.tolist())) == 80  # every example its own draws
    natural, copy = seen[0][0], seen[-1][0]
    assert natural.all()  # language modelling: the whole window
    assert copy[:, :4].all() and not copy[:, 4:].any()  # up to the first scored token
    assert torch.equal(prompt_mask("copy", scored), copy.new_ones(40, 6) & (torch.arange(6) < 4))


def test_seed_replicas_train_from_their_own_shared_init(tmp_path):
    """Issue 14, finding 10: every twin claim rested on one seed; replicas per seed, intervals over seeds."""
    from massmech.core.twin import load_twin
    from massmech.studies.twins.train import checkpoint_dirs, train_variant

    cfg = dataclasses.replace(preset("tiny"), seeds=(1,))
    assert [v.name for v in cfg.variants if v.seed == 1] == ["rope-seed1", "absolute-seed1", "nope-seed1"]
    assert TwinsConfig.from_dict(json.loads(cfg.to_json())) == cfg  # replicas are not added twice
    with pytest.raises(TwinError, match="distinct"):
        dataclasses.replace(cfg, seeds=(0,))
    for name in ("rope", "rope-seed1", "nope-seed1"):
        train_variant(cfg, name, tmp_path, stop_at=0, progress=False)
    w = {n: load_twin(checkpoint_dirs(tmp_path, cfg.variant(n))[0]).state_dict() for n in ("rope", "rope-seed1", "nope-seed1")}
    key = next(k for k in w["rope"] if k.endswith("q_proj.weight"))
    assert not torch.equal(w["rope"][key], w["rope-seed1"][key])  # another seed, another init
    assert torch.equal(w["rope-seed1"][key], w["nope-seed1"][key])  # the twins of one seed share it


def test_mixed_precision_training_resumes_bit_for_bit(tmp_path):
    """bf16 autocast (the GPU default, forced here on the CPU): finite, not the fp32 arithmetic, and
    resumable from a checkpoint exactly as the fp32 path is."""
    cfg = SMALL.replace(steps=6, checkpoints=(3, 6), precision="bf16")
    full = train_variant(cfg, "rope", tmp_path / "a", device="cpu", progress=False)
    train_variant(cfg, "rope", tmp_path / "b", stop_at=3, device="cpu", progress=False)
    resumed = train_variant(cfg, "rope", tmp_path / "b", device="cpu", progress=False)
    assert resumed == full and all(math.isfinite(r["loss"]) for r in full)
    fp32 = train_variant(cfg.replace(precision="fp32"), "rope", tmp_path / "c", device="cpu", progress=False)
    assert [r["loss"] for r in fp32] != [r["loss"] for r in full]
    with pytest.raises(TwinError, match="precision"):
        SMALL.replace(precision="fp8")
