"""The quantization study: specs, each method's edits, the variant cache, the table, the CLI."""

from __future__ import annotations

import builtins
import json

import pandas as pd
import pytest
import torch

from massmech import load_model, plotting
from massmech.cli import main as cli
from massmech.core.decoder import linears as decoder_linears
from massmech.core.loading import load_hf
from massmech.errors import QuantError
from massmech.studies.quant.config import QuantSpec, QuantStudyConfig
from massmech.studies.quant.smoothing import smoothing_names
from massmech.studies.quant.study import run_quant_study
from massmech.studies.quant.variants import apply_variant, compute_weights, variant_weights

CALIB = torch.randint(0, 200, (4, 64), generator=torch.Generator().manual_seed(1)).tolist()
SMALL = dict(model="tiny-llama", tasks=("country_capital", "kv_lookup"), n=4, calib_tokens=512, eval_tokens=512, seq_len=128)
COLUMNS = ["model", "variant", "method", "family", "bits", "group_size", "alpha", "sites", "layers", "draw",
           "outlier_aware", "base",
           "same_as_base", "measure", "site", "stage", "task", "kind", "scorer", "value", "ci_low", "ci_high", "n",
           "b", "c", "p_value", "chance", "acc_norm", "evaluable", "p_holm"]


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MASSMECH_CACHE", str(tmp_path / "cache"))


@pytest.mark.parametrize(("kwargs", "match"), [
    (dict(method="fp4"), "unknown method 'fp4'; methods are none, rtn"),
    (dict(method="rtn", bits=3), r"rtn supports bits \(4, 8\), got 3"),
    (dict(method="awq", bits=8), r"awq supports bits \(4,\)"),
    (dict(method="gguf-q4_0", bits=4), "no bits setting"),
    (dict(method="kv-per-token", bits=4, group_size=32), "takes no group size"),
    (dict(method="smoothquant", bits=8, alpha=1.5), "alpha must be in"),
    (dict(method="qk-rtn", bits=4, sites="v"), "sites must be one of"),
    (dict(method="qk-rtn", bits=4, draw=-1), "draw >= 0"),
    (dict(method="rtn", bits=4, draw=1), "settings of the qk-\\* methods only"),
])
def test_bad_specs(kwargs, match):
    with pytest.raises(QuantError, match=match):
        QuantSpec(**kwargs)


def test_spec_defaults_and_labels():
    assert QuantSpec.of("rtn") == QuantSpec("rtn", 4, 64)
    assert QuantSpec.of("rtn", 8).label == "rtn-w8-pc"
    assert QuantSpec.of("gptq").label == "gptq-w4-g64"
    assert QuantSpec.of("smoothquant", alpha=0.8).label == "smoothquant-a0.8"
    assert QuantSpec.of("kv-massive-aware", 2).label == "kv-massive-aware-2b"
    cfg = QuantStudyConfig(variants=(QuantSpec.of("awq"),))
    assert QuantStudyConfig.from_json(cfg.to_json()) == cfg


@pytest.mark.parametrize("spec", [QuantSpec.of("rtn", group_size=16), QuantSpec.of("rtn", 8), QuantSpec.of("gguf-q4_0"),
                                  QuantSpec.of("w8a8-naive"), QuantSpec.of("awq", group_size=16), QuantSpec.of("smoothquant")])
def test_each_method_changes_what_it_should_and_nothing_else(spec):
    hf, *_ = load_hf("tiny-llama")
    linears = {f"{n}.weight" for n in decoder_linears(hf)}
    changed = set(compute_weights("tiny-llama", spec, CALIB))
    if spec.method in ("awq", "smoothquant"):
        norms = {f"model.{n}" for n in smoothing_names(hf, awq=spec.method == "awq")}
        assert linears <= changed <= linears | norms
        assert changed & norms  # the scales were folded somewhere
    else:
        assert changed == linears  # embeddings, norms and the LM head untouched


def test_gptq_writes_int4_group_weights():
    pytest.importorskip("llmcompressor")
    spec = QuantSpec.of("gptq", group_size=16)
    w = compute_weights("tiny-llama", spec, CALIB)
    hf, *_ = load_hf("tiny-llama")
    assert set(w) == {f"{n}.weight" for n in decoder_linears(hf)}
    q = w["model.layers.0.self_attn.q_proj.weight"].reshape(64, -1, 16)  # [out, groups, g]
    levels = torch.tensor([len(torch.unique(grp)) for grp in q.reshape(-1, 16)])
    assert int(levels.max()) <= 16  # at most 2**4 values per group
    ref = hf.model.layers[0].self_attn.q_proj.weight
    assert 0.01 < float((w["model.layers.0.self_attn.q_proj.weight"] - ref).norm() / ref.norm()) < 0.5


def test_gptq_without_llmcompressor_names_the_extra(monkeypatch):
    real = builtins.__import__

    def fake(name, *args, **kwargs):
        if name == "llmcompressor" or name.startswith("llmcompressor."):
            raise ImportError("No module named 'llmcompressor'")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake)
    with pytest.raises(QuantError, match=r"pip install 'massmech\[quant\]'"):
        compute_weights("tiny-llama", QuantSpec.of("gptq", group_size=16), CALIB)


def test_group_size_that_does_not_divide_lists_sizes_and_writes_nothing(tmp_path):
    cfg = QuantStudyConfig(**SMALL, variants=(QuantSpec("rtn", 4, 48),))
    with pytest.raises(QuantError, match=r"group_size 48 does not divide the input width 64; sizes that do: \[2, 4, 8, 16, 32, 64\]"):
        run_quant_study(cfg, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_a_prompt_beyond_the_context_fails_before_any_work(tmp_path, monkeypatch):
    """Issue 25: a task longer than the model's context is refused in the plan (it failed after
    19 s of quantizing), naming the example, and no folder is made."""
    import massmech.studies.quant.study as study

    long, original = study.get_task("passkey", filler_repeats=400), study.get_task
    monkeypatch.setattr(study, "get_task", lambda name, **kw: long if name == "passkey" else original(name, **kw))
    cfg = QuantStudyConfig(**(SMALL | {"tasks": ("kv_lookup", "passkey")}), variants=(QuantSpec("rtn", 4, 16),))
    with pytest.raises(ValueError, match=r"example \d+ has \d+ tokens, more than tiny-llama's context of 4096"):
        run_quant_study(cfg, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_smoothing_on_a_model_without_the_layout_fails_before_any_work(tmp_path):
    cfg = QuantStudyConfig(**(SMALL | {"model": "tiny-gpt2"}), variants=(QuantSpec.of("smoothquant"),))
    with pytest.raises(ValueError, match="Llama/Qwen2/Gemma-3"):
        run_quant_study(cfg, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_variant_cache_and_apply_restore(tmp_path, monkeypatch):
    import massmech.studies.quant.variants as qs

    cfg = QuantStudyConfig(**SMALL)
    spec = QuantSpec.of("rtn", group_size=16)
    first = variant_weights("tiny-llama", spec, cfg, CALIB)
    monkeypatch.setattr(qs, "compute_weights", lambda *a, **k: pytest.fail("recomputed a cached variant"))
    again = variant_weights("tiny-llama", spec, cfg, CALIB)
    assert set(first) == set(again) and all(torch.equal(first[k], again[k]) for k in first)
    model = load_model("tiny-llama")
    ids = torch.tensor([CALIB[0]])
    clean = model.bridge(ids, return_type="logits")
    with apply_variant(model, spec, first):
        quant = model.bridge(ids, return_type="logits")
    assert not torch.allclose(quant, clean)
    assert torch.equal(model.bridge(ids, return_type="logits"), clean)  # undone on exit


def test_kv_variant_touches_only_the_cached_site():
    model = load_model("tiny-llama")
    spec = QuantSpec.of("kv-per-token", 2)
    ids = torch.tensor([CALIB[0]])
    names = {n: n for n in ("blocks.0.attn.hook_k", "blocks.0.attn.hook_rot_k")}
    clean = model.run_hooks(ids, names)
    with apply_variant(model, spec, {}):
        quant = model.run_hooks(ids, names)  # registered after the KV hooks: sees their output
    assert torch.equal(quant["blocks.0.attn.hook_k"], clean["blocks.0.attn.hook_k"])
    assert not torch.allclose(quant["blocks.0.attn.hook_rot_k"], clean["blocks.0.attn.hook_rot_k"])


def test_study_table_schema_and_determinism(tmp_path, monkeypatch):
    cfg = QuantStudyConfig(**SMALL, variants=(QuantSpec.of("rtn", group_size=16), QuantSpec.of("kv-massive-aware", 2),
                                             QuantSpec.of("w8a8-naive"), QuantSpec.of("awq", group_size=16)))
    a = run_quant_study(cfg, tmp_path / "a", progress=False)
    monkeypatch.setenv("MASSMECH_CACHE", str(tmp_path / "cache2"))  # recompute the weights too
    b = run_quant_study(cfg, tmp_path / "b", progress=False)
    pd.testing.assert_frame_equal(a, b)
    assert list(a.columns) == COLUMNS
    assert list(a.variant.unique()) == ["none", "rtn-w4-g16", "kv-massive-aware-2b", "w8a8-naive", "awq-w4-g16"]
    per = a.groupby("variant").measure.value_counts().unstack()
    assert (per["accuracy"] == 2).all() and (per["recall"] == 4).all() and (per["perplexity"] == 1).all()
    acc = a[a.measure == "accuracy"]
    assert acc[acc.variant == "none"].p_value.isna().all()  # the reference is not tested against itself
    tested = acc[acc.variant != "none"]
    assert tested.p_value.between(0, 1).all() and (tested.b.notna() & tested.c.notna()).all()
    assert (acc.chance == 0).all() and acc.evaluable.notna().all()  # exact-match tasks: chance 0
    kv_bits = a[(a.variant == "kv-massive-aware-2b") & (a.measure == "bits_per_value")]
    assert set(kv_bits.task.dropna()) == set(cfg.tasks)  # per task, from its real prompt lengths
    assert (tmp_path / "a" / "manifest.json").exists() and (tmp_path / "a" / "results.csv").exists()
    examples = pd.read_parquet(tmp_path / "a" / "examples.parquet")  # what paired tests across variants read
    assert len(examples) == 5 * 2 * 4 and set(examples.variant) == set(a.variant)
    ppl = a[a.measure == "perplexity"].set_index("variant").value
    assert ppl["rtn-w4-g16"] != ppl["none"] and ppl["w8a8-naive"] != ppl["none"]  # no silent no-op
    err = a[(a.measure == "rel_error_other") & (a.site == "k") & (a.stage == "post")].set_index("variant").value
    assert err["none"] == 0.0 and err["kv-massive-aware-2b"] > 0
    c = run_quant_study(cfg, tmp_path / "a", progress=False)  # resumed from the cells
    pd.testing.assert_frame_equal(a, c)
    for fig in ("quant_tasks", "quant_preservation", "quant_kv"):  # the figures draw from the table
        getattr(plotting, fig)(a, out=tmp_path / fig)
        assert (tmp_path / f"{fig}.pdf").stat().st_size > 0 and (tmp_path / f"{fig}.png").exists()
    plotting.close_all()
    with pytest.raises(ValueError, match="no reference"):
        plotting.quant_tasks(a[a.variant != "none"])


def test_cli_json(capsys):
    code = cli(["quantize", "--model", "tiny-llama", "--method", "rtn", "--bits", "8", "--tasks", "country_capital,kv_lookup",
                "--n", "4", "--json"])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert {"massive_recall", "perplexity", "tasks", "preservation", "reference", "base"} <= set(out)
    assert set(out["tasks"]) == {"country_capital", "kv_lookup"}
    assert set(out["tasks"]["kv_lookup"]) >= {"accuracy", "ci_low", "ci_high", "n"}
    assert out["variant"] == "rtn-w8-pc" and out["bits"] == 8 and out["base"] == "float (random init)"


def test_cli_bad_input(capsys):
    assert cli(["quantize", "--model", "tiny-llama", "--method", "nf4"]) == 2
    assert "unknown method 'nf4'" in capsys.readouterr().err
    assert cli(["quantize", "--model", "tiny-llama", "--method", "rtn", "--group-size", "7", "--tasks", "kv_lookup"]) == 2
    assert "sizes that do" in capsys.readouterr().err


@pytest.mark.parametrize("spec", [QuantSpec.of("w8a8-naive"), QuantSpec.of("smoothquant"), QuantSpec.of("rtn", group_size=16),
                                  QuantSpec.of("kv-per-channel", 2), QuantSpec.of("kv-per-token", 2)],
                         ids=lambda s: s.label)
def test_every_variant_is_batch_invariant(spec):
    """Issue 14, finding 2: an example's verdict and prediction do not depend on its batch-mates."""
    from massmech.causal.evaluate import evaluate
    from massmech.causal.tasks.builtin import get_task

    cfg = QuantStudyConfig(**SMALL, variants=(spec,))
    model = load_model("tiny-llama")
    weights = compute_weights("tiny-llama", spec, CALIB)
    with apply_variant(model, spec, weights):
        runs = [evaluate(model, get_task(t), {"baseline": None}, n=8, batch_size=bs, progress=False)
                for t in cfg.tasks for bs in (1, 8)]
    for one, eight in zip(runs[::2], runs[1::2], strict=True):
        pd.testing.assert_frame_equal(one[["uid", "correct", "pred"]], eight[["uid", "correct", "pred"]])


def test_kv_bits_count_the_scales_at_the_real_length():
    """Issue 14, finding 8: per-channel keys cost bits + 2 x 16 / L at length L (not at the window length)."""
    from massmech.studies.quant.data import StudyData
    from massmech.studies.quant.variants import kv_bits

    model = load_model("tiny-llama")
    data = StudyData(calib=[], held=[[1] * 512] * 2)
    per_channel = QuantSpec.of("kv-per-channel", 4)
    assert kv_bits(model, per_channel, data) == pytest.approx(4 + 32 / 512)
    assert kv_bits(model, per_channel, data, tokens=40) == pytest.approx(4 + 32 / 40)  # a short task prompt
    assert kv_bits(model, QuantSpec.of("kv-per-token", 4), data, tokens=40) == pytest.approx(4 + 32 / model.info.d_head)


def test_qk_keep_rows_are_read_where_the_weights_produce_them():
    """Issue 26, item 5: on a QK-norm model the protected rows come from Q/K before the norm, not from
    the normed values whose shared gain decides what looks massive there."""
    from massmech.core.capture import capture_stats
    from massmech.core.detect import massive_mask
    from massmech.studies.quant.variants import qk_keep_rows

    stats = capture_stats(load_model("tiny-gemma3"), CALIB, sites=("q", "k"), stages=("raw", "pre"), progress=False)
    rows = qk_keep_rows("tiny-gemma3", CALIB, lam=1.1)
    for site in ("q", "k"):
        raw, normed = (massive_mask(stats.norm(site, st), lam=1.1) for st in ("raw", "pre"))
        assert torch.equal(rows[site], raw) and not torch.equal(raw, normed), site


def test_qk_only_arm_keeps_the_massive_rows_or_as_many_others():
    """Issue 14, finding 9: the mechanism tested directly: only W_q/W_k quantized, the rows making
    the massive Q/K dims kept exact, against the same number of other rows kept (equal bits)."""
    from massmech.studies.quant.data import StudyData
    from massmech.studies.quant.variants import bits_per_value, qk_keep_rows

    massive = qk_keep_rows("tiny-llama", CALIB, lam=1.1)
    other = qk_keep_rows("tiny-llama", CALIB, lam=1.1, random=True)
    assert massive["q"].any() and massive["k"].any()
    for site in ("q", "k"):
        assert torch.equal(massive[site].sum(-1), other[site].sum(-1)) and not (massive[site] & other[site]).any()
    hf, *_ = load_hf("tiny-llama")
    clean = {k: v.clone() for k, v in hf.state_dict().items()}
    model = load_model("tiny-llama")
    data = StudyData(calib=CALIB, held=CALIB)
    bits = {}
    for method, keep in (("qk-rtn-keep-massive", massive), ("qk-rtn-keep-random", other), ("qk-rtn", None)):
        spec = QuantSpec(method, 4, None)
        weights = compute_weights("tiny-llama", spec, CALIB, lam=1.1)
        assert all(k.endswith(("q_proj.weight", "k_proj.weight")) for k in weights) and len(weights) == 4
        for name, w in weights.items():
            layer, site = int(name.split("layers.")[1].split(".")[0]), name.split(".")[-2][0]
            same = (w == clean[name]).all(1)
            expect = keep[site][layer].flatten() if keep is not None else torch.zeros_like(same)
            assert torch.equal(same, expect)  # exactly the kept rows are exact
        bits[method] = bits_per_value(model, spec, weights, data)
    assert bits["qk-rtn-keep-massive"] == pytest.approx(bits["qk-rtn-keep-random"])
    assert bits["qk-rtn-keep-massive"] > bits["qk-rtn"] > 4


def test_gemma3_awq_leaves_attention_projections_as_rtn():
    """Issue 14, finding 9: on Gemma-3 layouts AWQ smooths only the MLP, so its Q/K/V/O weights are
    exactly RTN's: its gap over RTN says nothing about the Q/K massive values (and summaries say so)."""
    from massmech.studies.quant.config import PROTECTS

    awq = compute_weights("tiny-gemma3", QuantSpec("awq", 4, 16), CALIB)
    rtn = compute_weights("tiny-gemma3", QuantSpec("rtn", 4, 16), CALIB)
    attn = [k for k in rtn if any(p in k for p in ("q_proj", "k_proj", "v_proj", "o_proj"))]
    assert attn and all(torch.equal(awq[k], rtn[k]) for k in attn)
    mlp = [k for k in rtn if "mlp" in k]
    assert any(not torch.equal(awq[k], rtn[k]) for k in mlp)
    assert "not q/k/v/o on Gemma-3" in PROTECTS["awq"]


def test_qk_variants_by_part_and_draw():
    """Issue 26, item 6: W_q or W_k alone, local or global layers, and stochastic roundings (one per
    draw, repeatable), with keep-random's rows drawn anew per draw."""
    from massmech.studies.quant.variants import qk_keep_rows

    k_only = compute_weights("tiny-llama", QuantSpec("qk-rtn", 4, None, sites="k"), CALIB)
    assert k_only and all(k.endswith("k_proj.weight") for k in k_only)
    with pytest.raises(QuantError, match="no sliding_attention layer"):
        compute_weights("tiny-llama", QuantSpec("qk-rtn", 4, None, layers="local"), CALIB)
    hf, *_ = load_hf("tiny-gemma3")
    local = [i for i, t in enumerate(hf.config.layer_types) if t == "sliding_attention"]
    assert 0 < len(local) < hf.config.num_hidden_layers
    changed = compute_weights("tiny-gemma3", QuantSpec("qk-rtn", 4, None, layers="local"), CALIB)
    assert changed and {int(k.split("layers.")[1].split(".")[0]) for k in changed} == set(local)
    one, again, two, nearest = (compute_weights("tiny-llama", QuantSpec("qk-rtn", 4, None, draw=d), CALIB)
                                for d in (1, 1, 2, 0))
    assert set(one) == set(two) == set(nearest)
    assert all(torch.equal(one[k], again[k]) for k in one)  # a draw is repeatable
    assert any(not torch.equal(one[k], two[k]) for k in one) and any(not torch.equal(one[k], nearest[k]) for k in one)
    rows = [qk_keep_rows("tiny-llama", CALIB, lam=1.1, random=True, seed=s)["q"] for s in (0, 1_000_004)]
    assert torch.equal(rows[0].sum(-1), rows[1].sum(-1)) and not torch.equal(rows[0], rows[1])


def test_stochastic_rounding_is_unbiased():
    from massmech.studies.quant.methods import rtn

    w = torch.full((1, 4096), 0.03)
    w[0, 0] = 0.7  # scale 0.1: 0.03 rounds to 0 nearest, to 0.1 with probability 0.3 stochastically
    assert rtn(w, 4)[0, 1:].abs().max() == 0
    mean = rtn(w, 4, generator=torch.Generator().manual_seed(3))[0, 1:].mean()
    assert abs(float(mean) - 0.03) < 0.004  # 4095 draws: standard error 0.0007


def test_each_task_is_scored_by_every_scorer_that_applies(tmp_path):
    """Issue 26, items 1 and 6: a quant table names its scorer per row; rank only where distractors exist."""
    base = dict(SMALL, tasks=("passkey", "kv_lookup"), variants=(QuantSpec.of("rtn", group_size=16),))
    strict_only = QuantStudyConfig(**base)
    assert "scorers" not in strict_only.key_dict()  # the cells of configs from before scorers keep their keys
    cfg = QuantStudyConfig(**base, scorers=("strict", "rank", "contains"), max_new_tokens=4)
    t = run_quant_study(cfg, tmp_path / "run", progress=False)
    acc = t[t.measure == "accuracy"]
    got = set(zip(acc.variant, acc.task, acc.scorer, strict=True))
    want = {(v, task, s) for v in ("none", "rtn-w4-g16") for task, ss in (("passkey", ("strict", "contains")),
                                                                         ("kv_lookup", ("strict", "rank", "contains")))
            for s in ss}
    assert got == want
    assert (acc[acc.scorer == "rank"].chance > 0).all() and (acc[acc.scorer != "rank"].chance == 0).all()
    examples = pd.read_parquet(tmp_path / "run" / "examples.parquet")
    assert set(examples.scorer) == {"strict", "rank", "contains"} and len(examples) == 2 * 5 * 4
    assert examples.pred.map(lambda p: isinstance(p, str)).all()  # what the model answered, to read
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert set(summary["variants"]["none"]["tasks"]) == {"passkey", "kv_lookup"}  # the first scorer's
    with pytest.raises(QuantError, match="scorers must be"):
        QuantStudyConfig(**base, scorers=("bleu",))


def test_first_line_reads_the_contains_replies_without_a_second_generation(tmp_path, monkeypatch):
    """first-line is the contains generation read to its first line: its verdicts come from the same
    stored replies, and the model generates once per (variant, task), not twice."""
    import massmech.causal.evaluate as ev
    from massmech.causal.evaluate import holds
    from massmech.causal.tasks.builtin import get_task

    calls = []
    real = ev.generate_exact
    monkeypatch.setattr(ev, "generate_exact", lambda *a, **k: calls.append(k.get("match")) or real(*a, **k))
    cfg = QuantStudyConfig(**dict(SMALL, tasks=("kv_lookup",), variants=()), scorers=("contains", "first-line"),
                           max_new_tokens=6)
    run_quant_study(cfg, tmp_path / "run", progress=False)
    assert calls == ["contains"]  # one variant (the reference), one generation
    ex = pd.read_parquet(tmp_path / "run" / "examples.parquet")
    wide = ex.pivot(index="uid", columns="scorer", values=["correct", "pred"])
    assert (wide["pred"]["contains"] == wide["pred"]["first-line"]).all()
    gold = {e.uid: e.answer for e in get_task("kv_lookup").examples(SMALL["n"], cfg.seed)}
    assert [holds(gold[u], p, "first-line") for u, p in wide["pred"]["first-line"].items()] == wide["correct"]["first-line"].tolist()


@pytest.mark.parametrize("method,bits", [("kv-per-token", 4), ("w8a8-naive", 8), ("rtn", 4)])
def test_perplexity_sees_every_kind_of_variant(method, bits):
    """Perplexity unembeds row by row (a hidden-state forward, not the bridge's logits): a variant's
    hooks and weights must still act there, to the digit of the whole batch's logits."""
    from massmech.causal.batch import batch_masks
    from massmech.causal.perplexity import perplexity
    from massmech.core.models import pad_batch
    from massmech.stats import token_nll

    model = load_model("tiny-llama")
    windows = torch.randint(3, 250, (3, 40), generator=torch.Generator().manual_seed(0)).tolist()
    windows[1] = windows[1][:25]  # padding must not count

    def batch_logits_nll() -> float:
        ids, mask = pad_batch(windows, model.pad_id)
        with torch.inference_mode(), batch_masks(mask.long()):
            nll = token_nll(model.logits(ids, mask.long()), ids)
        return float(nll[mask[:, 1:].bool()].double().mean())

    plain = perplexity(model, windows)["nll"]
    spec = QuantSpec.of(method, bits)
    with apply_variant(model, spec, compute_weights("tiny-llama", spec, CALIB)):
        got, want = perplexity(model, windows)["nll"], batch_logits_nll()
    assert got == pytest.approx(want, rel=1e-6) and got != pytest.approx(plain, rel=1e-7)
