import json

import numpy as np
import pandas as pd
import pytest

import massmech as mm
from massmech.cli import main
from massmech.studies.analyze import AnalyzeConfig


def test_doctor_json_on_tiny(capsys):
    assert main(["doctor", "--model", "tiny-gemma3", "--json"]) == 0
    verdict = json.loads(capsys.readouterr().out)
    assert verdict["ok"] is True
    assert verdict["max_abs_logit_diff"] <= 1e-4
    assert verdict["rope_bases"] == pytest.approx([1e4, 1e4, 1e6], rel=1e-5)
    assert verdict["checks"] == {"logits_match": True, "kv_cache": True, "hooks_fire": True, "rope_verified": True}


def test_doctor_no_rope_model(capsys):
    assert main(["doctor", "--model", "tiny-gpt2", "--json"]) == 0
    verdict = json.loads(capsys.readouterr().out)
    assert verdict["rope_bases"] == [] and "rope_verified" not in verdict["checks"]


def test_analyze_end_to_end(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["analyze", "--model", "tiny-llama", "--out", str(out), "--tokens", "300", "--seq-len", "64", "--json"]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["n_tokens"] == 300 and summary["out_dir"] == str(out.resolve())
    assert set(summary["by_stage"]) == {"q.pre", "q.post", "k.pre", "k.post", "v.pre"}
    assert not {"q", "k", "v"} & set(summary)  # every number is labelled with its stage
    for s in summary["by_stage"].values():
        assert {"massive_count", "low_band_energy_fraction", "massive_low_band_share", "threshold_layer"} <= set(s)
    assert set(summary["emergence"]) == {"q", "k"} and "layer" in summary["emergence"]["k"]
    for name in ("stats.npz", "stats.parquet", "massive.parquet", "pairs.parquet", "layers.parquet", "emergence.parquet",
                 "manifest.json", "summary.json"):
        assert (out / name).is_file(), name
    for fig in ("heatmap", "bars3d", "emergence", "spectrum"):
        for ext in ("pdf", "png"):
            assert (out / "figures" / f"{fig}.{ext}").stat().st_size > 1000, fig
    manifest = json.loads((out / "manifest.json").read_text())
    cfg = AnalyzeConfig.from_json(json.dumps(manifest["config"]))
    assert cfg == AnalyzeConfig(model="tiny-llama", n_tokens=300, seq_len=64)
    assert manifest["model"]["tiny-llama"]["name"] == "tiny-llama" and manifest["versions"]["torch"]
    stats = mm.QKVStats.load(out / "stats.npz")
    assert stats.n_tokens == 300
    assert len(pd.read_parquet(out / "stats.parquet")) == sum(t.numel() for t in stats.sumsq.values())
    assert [p.name for p in tmp_path.iterdir()] == ["run"]  # no temp folders left behind


def test_analyze_bad_input_leaves_nothing(tmp_path, capsys):
    out = tmp_path / "new" / "sub" / "run"  # not even the parents may appear
    assert main(["analyze", "--model", "tiny-llama", "--out", str(out), "--lam", "-1"]) == 2
    assert "lam must be > 0" in capsys.readouterr().err
    assert main(["analyze", "--model", "tiny-llama", "--out", str(out), "--plot-layers", "7"]) == 2
    assert "layer 7 out of range" in capsys.readouterr().err
    assert main(["analyze", "--model", "tiny-gpt2", "--out", str(out)]) == 2
    assert "no rotary position embedding" in capsys.readouterr().err
    assert main(["analyze", "--model", "tiny-llama", "--out", str(out), "--n-tokens", "256"]) == 2
    assert "needs at least 2" in capsys.readouterr().err  # one window: nothing for the emergence bootstrap
    assert list(tmp_path.iterdir()) == []
    # parameters of the frequency analysis are checked before the capture, too
    from massmech.studies.analyze import run_analyze

    with pytest.raises(ValueError, match="n_bands"):
        run_analyze(AnalyzeConfig(model="tiny-llama", n_bands=99), out)
    assert list(tmp_path.iterdir()) == []


def test_unwritable_out_under_a_file(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["analyze", "--model", "tiny-llama", "--out", str(blocker / "run")]) == 2
    assert "is not a folder" in capsys.readouterr().err


def test_unknown_model(capsys):
    assert main(["doctor", "--model", "nope"]) == 2
    assert "unknown model spec" in capsys.readouterr().err
    assert main(["doctor", "--model", "./missing_folder"]) == 2  # a path: said to be missing, not "unknown"
    assert "no such model folder or .gguf file: missing_folder" in capsys.readouterr().err


def test_config_json_roundtrip():
    cfg = AnalyzeConfig(model="tiny-qwen2", lam=3.0, heatmap_layers=(0, 1))
    assert AnalyzeConfig.from_json(cfg.to_json()) == cfg


def test_ablate_json(tmp_path, capsys):
    out = tmp_path / "abl"
    args = ["ablate", "--model", "tiny-llama", "--task", "kv_lookup", "--n", "8", "--rule", "topk", "--k", "2",
            "--control", "random", "--out", str(out), "--json"]
    assert main(args) == 0
    res = json.loads(capsys.readouterr().out)
    for name in ("baseline", "massive", "control"):
        assert {"accuracy", "ci_low", "ci_high", "n"} <= set(res[name]) and res[name]["n"] == 8
        assert res[name]["ci_low"] <= res[name]["accuracy"] <= res[name]["ci_high"]
    assert res["massive"]["n_dims"] == res["control"]["n_dims"] > 0 == res["baseline"]["n_dims"]
    assert json.loads((out / "ablate.json").read_text()) == res and (out / "manifest.json").exists()
    rows = pd.read_parquet(out / "examples.parquet")  # the per-example verdicts, not only aggregates
    assert len(rows) == 3 * 8 and set(rows.condition) == {"baseline", "massive", "control"}
    assert {"uid", "group", "correct", "pred", "n_dims"} <= set(rows.columns)
    assert rows.groupby("condition").correct.mean()["massive"] == res["massive"]["accuracy"]


def test_ablate_own_file_as_written_says_what_it_measured(tmp_path, capsys):
    """Issue 25: the prompt as the template makes it, shown; fewer rows than n used and said; a run
    that cannot show an effect says so in the text; the massive arm tested against its control;
    the examples table carries prompt and gold answer."""
    rows = tmp_path / "caps.jsonl"
    rows.write_text('{"q": "The capital of France is", "a": "Paris"}\n{"q": "The capital of Peru is", "a": "Lima"}\n')
    out = tmp_path / "abl"
    args = ["ablate", "--model", "tiny-llama", "--task-file", str(rows), "--field", "question=q", "--field", "answer=a",
            "--template", "Q: {question}", "--n", "10", "--rule", "topk", "--k", "2", "--out", str(out)]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "first prompt: '<bos>Q: The capital of" in text and "the task has 2 examples; all are used (asked for 10)" in text
    assert "NOT EVALUABLE" in text and "massive vs control (same examples): McNemar b=" in text  # a random model
    res = json.loads((out / "ablate.json").read_text())
    assert res["n_asked"] == 10 and res["baseline"]["n"] == 2 and set(res["massive_vs_control"]) == {"b", "c", "p_value"}
    assert json.loads((out / "manifest.json").read_text())["config"]["first_prompt"].startswith("<bos>Q: The capital of")
    table = pd.read_parquet(out / "examples.parquet")
    assert set(table.prompt.str[:8]) == {"<bos>Q: "} and set(table.gold.str.strip()) == {"Paris", "Lima"}
    assert res["separation"] is None and table.margin.isna().all()  # exact answers: no options to rank
    assert set(table.source_id) == {f"{rows}, line 1", f"{rows}, line 2"}  # the user's own rows, by place


def test_ablate_choice_task_keeps_each_option_and_reports_the_margin_auroc(tmp_path, capsys):
    """Issue 25: a yes/no task keeps each option's log-probability and the margin, and ablate reports
    the margin's AUROC (DeLong interval, paired test against the baseline) next to accuracy."""
    from massmech.stats import auroc

    rows = tmp_path / "facts.jsonl"
    facts = [("Paris is in France.", "Yes"), ("Lima is in Peru.", "Yes"), ("Rome is in Spain.", "No"),
             ("Oslo is in Chile.", "No"), ("Cairo is in Egypt.", "Yes"), ("Quito is in Japan.", "No")]
    rows.write_text("".join(json.dumps({"q": q, "opts": ["Yes", "No"], "a": a}) + "\n" for q, a in facts))
    out = tmp_path / "abl"
    assert main(["ablate", "--model", "tiny-llama", "--task-file", str(rows), "--field", "question=q", "--field",
                 "choices=opts", "--field", "answer=a", "--format", "choice", "--rule", "topk", "--k", "2",
                 "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "margin AUROC (logprob(option 0) - logprob(option 1)" in text and "DeLong vs baseline p=" in text
    res = json.loads((out / "ablate.json").read_text())
    table = pd.read_parquet(out / "examples.parquet")
    base = table[table.condition == "baseline"]
    lp = np.stack(base.logprobs.to_list())  # [example, option]
    gold = (base.gold.str.strip() == "B").to_numpy().astype(int)  # option index of the gold answer (A. Yes, B. No)
    np.testing.assert_allclose(base.margin, lp[np.arange(len(lp)), gold] - lp[np.arange(len(lp)), 1 - gold])
    score = lp[:, 0] - lp[:, 1]  # recomputed by hand from the stored log-probabilities
    assert res["separation"]["baseline"]["auroc"] == pytest.approx(auroc(score[gold == 0], score[gold == 1]))
    sep = res["separation"]["massive"]
    assert 0 <= sep["ci_low"] <= sep["auroc"] <= sep["ci_high"] <= 1 and 0 <= sep["p_vs_baseline"] <= 1


def test_task_params_fit_a_small_context(capsys):
    """A passkey longer than tiny-llama's context is refused; --task-param sets its length."""
    args = ["ablate", "--model", "tiny-llama", "--task", "passkey", "--n", "5", "--json"]
    assert main([*args, "--task-param", "filler_repeats=400"]) == 2 and "context" in capsys.readouterr().err
    params = ["--task-param", "filler_repeats=1", "--task-param", "depths=(0.0, 1.0)"]
    # a random tiny model has no lambda-massive dims: the no-op guard names the examples by uid
    assert main([*args, *params, "--lam", "1000"]) == 2
    err = capsys.readouterr().err
    assert "changed no activation of examples (uid) [" in err and "selected no dim" in err
    assert main([*args, *params, "--rule", "topk", "--k", "2"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["task_config"]["filler_repeats"] == 1 and res["task_config"]["depths"] == [0.0, 1.0]


def test_analyze_own_text_and_dataset(tmp_path, capsys):
    import datasets

    text = tmp_path / "book.txt"
    text.write_text(" ".join(f"Sentence number {i} of my own corpus." for i in range(200)))
    base = ["analyze", "--model", "tiny-llama", "--tokens", "256", "--seq-len", "64", "--json"]
    assert main([*base, "--text", str(text), "--out", str(tmp_path / "a")]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["n_tokens"] == 256 and summary["corpus"] == f"text: {text}"
    ds = tmp_path / "ds"
    datasets.Dataset.from_dict({"body": [f"Document {i}: " + "words " * 80 for i in range(4)]}).save_to_disk(str(ds))
    assert main([*base, "--dataset", str(ds), "--text-field", "body", "--out", str(tmp_path / "b")]) == 0
    assert json.loads(capsys.readouterr().out)["corpus"].startswith("dataset: ")
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text("".join(json.dumps({"text": "A line of my data set. " * 30}) + "\n" for _ in range(4)))
    assert main([*base, "--dataset", str(jsonl), "--out", str(tmp_path / "e")]) == 0
    capsys.readouterr()
    assert main([*base, "--dataset", str(ds), "--out", str(tmp_path / "c")]) == 2
    assert "no column 'text'" in capsys.readouterr().err
    assert main([*base, "--text", str(tmp_path / "missing.txt"), "--out", str(tmp_path / "d")]) == 2
    assert "not found" in capsys.readouterr().err
    assert not (tmp_path / "c").exists() and not (tmp_path / "d").exists()


def test_every_flag_has_help_and_version(capsys):
    import argparse

    from massmech.cli import build_parser

    parser = build_parser()
    subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    for name, sub in [("massmech", parser), *subs.items()]:
        for action in sub._actions:
            if action.help == argparse.SUPPRESS or isinstance(action, argparse._SubParsersAction):
                continue
            assert action.help, f"{name} {action.option_strings or action.dest} has no help"
    assert "(default: 5.0)" in subs["ablate"].format_help() and "--disrupt-layers" in subs["ablate"].format_help()
    assert "--plot-layers" in subs["analyze"].format_help() and "--device" in subs["doctor"].format_help()
    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.startswith("massmech ")


def test_models_json(capsys):
    assert main(["models", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["gemma3-270m"]["extra"] == "gemma" and rows["tiny-llama"]["random_init"] is True
    for r in rows.values():
        assert {"installed", "parameters", "kind", "install"} <= set(r)


def test_doctor_flags_and_no_leaked_warnings(capsys):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a FutureWarning from transformers would fail here
        assert main(["doctor", "--model", "tiny-llama", "--dtype", "bfloat16", "--json"]) == 0
    verdict = json.loads(capsys.readouterr().out)
    assert verdict["model"]["dtype"] == verdict["dtype"] == "bfloat16" and verdict["ok"]
    from massmech.diagnostics.doctor import logit_tolerance

    # bf16: the depth-scaled rounding budget, not the fp32 tolerance
    assert verdict["logit_tol"] == logit_tolerance("bfloat16", 2, verdict["logit_tol_rule"]["logit_scale"]) > 1e-4


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--task", "capitals"], "unknown task"),
        (["--task", "kv_lookup", "--template", "Q: {question}"], "--template and --chat shape a --task-file"),
        (["--task", "kv_lookup", "--rule", "topk", "--k", "17"], "larger than d_head"),
        (["--task", "kv_lookup", "--stage", "post", "--model", "tiny-gpt2"], "no 'post' stage"),
        (["--task", "kv_lookup", "--disrupt-layers", "0-9"], "out of range"),
        (["--task", "passkey", "--task-param", "filler_repeats=400"], "context"),
        (["--task", "kv_lookup", "--task-param", "n_pairs=99"], "n_pairs"),
        (["--task", "kv_lookup", "--task-param", "nonsense"], "NAME=VALUE"),
    ],
)
def test_ablate_bad_input(extra, message, capsys, tmp_path):
    args = ["ablate", "--model", "tiny-llama", "--n", "4", "--out", str(tmp_path / "x"), *extra]
    assert main(args) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("study,skip", [("analyze", ()), ("ablation", ()), ("quant", ("variants",)),
                                        ("twins", ("preset", "variants"))])
def test_study_flags_are_the_config_fields(study, skip):
    import dataclasses

    from massmech.cli import build_parser
    from massmech.studies.registry import get_study

    spec = get_study(study)
    commands = next(a for a in build_parser()._actions if a.dest == "command").choices
    for name in spec.kinds:  # the study's command, and its older names
        flags = {s for a in commands[name]._actions for s in a.option_strings}
        missing = [f.name for f in dataclasses.fields(spec.config_class())
                   if f.name not in skip and "--" + f.name.replace("_", "-") not in flags]
        assert not missing, f"{name} lacks flags for {missing}"


def test_sweep_and_quant_study_commands(tmp_path, capsys):
    out = tmp_path / "sweep"
    args = ["sweep", "--preset", "k", "--models", "tiny-llama", "--tasks", "kv_lookup", "--n", "4", "--ks", "1,2",
            "--out", str(out), "--json"]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    table = pd.read_parquet(out / "results.parquet")
    assert summary["cells"] == len(table) == 1 + 2 * 3  # baseline + 2 ks x (massive + matched + lowest-norm control)
    assert sorted(table.k.dropna().unique().tolist()) == [1, 2]
    assert main(args) == 0  # resumed: nothing to do
    assert json.loads(capsys.readouterr().out) == summary
    q = tmp_path / "quant"
    assert main(["quant-study", "--preset", "kv", "--model", "tiny-llama", "--tasks", "kv_lookup", "--n", "4",
                 "--calib-tokens", "128", "--eval-tokens", "128", "--seq-len", "64", "--out", str(q), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["model"] == "tiny-llama" and len(summary["variants"]) == 1 + 6
    with pytest.raises(SystemExit) as exit_:  # argparse names the valid presets
        main(["quant-study", "--preset", "nope", "--out", str(tmp_path / "x")])
    assert exit_.value.code == 2 and "invalid choice" in capsys.readouterr().err


def test_analyze_reuses_its_capture_from_a_cell_store(tmp_path, capsys, monkeypatch):
    import massmech.studies.analyze.study as analyze
    from massmech.studies.registry import cell_versions

    base = ["analyze", "--model", "tiny-llama", "--tokens", "256", "--seq-len", "64", "--json",
            "--cells", str(tmp_path / "cells")]
    assert main([*base, "--out", str(tmp_path / "a"), "--lam", "5"]) == 0
    first = json.loads(capsys.readouterr().out)
    def boom(*a, **k):
        raise RuntimeError("captured again")

    monkeypatch.setattr(analyze, "capture_stats", boom)
    assert main([*base, "--out", str(tmp_path / "b"), "--lam", "1.2"]) == 0  # only the analysis changed
    second = json.loads(capsys.readouterr().out)
    from massmech.infra.cells import list_cells

    listed = list_cells(tmp_path / "cells", cell_versions())  # one current cell of the analyze study, as every study's
    assert list(listed["study"]) == ["analyze"] and listed["current"].all()
    a, b = (mm.QKVStats.load(tmp_path / r / "stats.npz") for r in ("a", "b"))
    assert all(a.sumsq[k].equal(b.sumsq[k]) for k in a.keys()) and a.n_tokens == b.n_tokens == 256
    assert second["by_stage"]["k.pre"]["massive_count"] >= first["by_stage"]["k.pre"]["massive_count"]
    with pytest.raises(RuntimeError, match="captured again"):  # other windows: a new cell
        main([*base, "--out", str(tmp_path / "c"), "--seq-len", "32"])


@pytest.mark.parametrize("device", ["nonsense", "cuda:7"])
def test_a_bad_device_is_a_clean_error(device, tmp_path, capsys):
    import torch

    if device.startswith("cuda") and torch.cuda.device_count() > 7:  # pragma: no cover
        pytest.skip("this machine has that device")
    assert main(["doctor", "--model", "tiny-llama", "--device", device]) == 2
    assert main(["analyze", "--model", "tiny-llama", "--device", device, "--out", str(tmp_path / "r")]) == 2
    assert "device" in capsys.readouterr().err and not (tmp_path / "r").exists()


def test_the_cli_the_json_and_the_ledger_give_one_emergence_layer(tmp_path, capsys):
    """One definition: the text the main job prints, its JSON and the ledger's P4 name the same layers."""
    import re

    from massmech.report.ledger import ledger
    from massmech.report.runs import run_folder

    out = tmp_path / "runs" / run_folder("analyze", "tiny-llama")
    args = ["analyze", "--model", "tiny-llama", "--out", str(out), "--tokens", "512", "--seq-len", "64"]
    assert main(args) == 0
    text = capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    printed = dict(re.findall(r"\b([QK]): (?:layer )?(\d+|none) of", text))
    assert printed == {s.upper(): str(summary["emergence"][s]["layer"]).replace("None", "none") for s in ("q", "k")}
    assert "threshold" not in text and "emergence" in text
    p4 = ledger(tmp_path / "runs", ("tiny-llama",)).set_index("key").loc["P4"]
    for site, layer in printed.items():
        assert f"{site}: {'layer ' if layer != 'none' else ''}{layer} of" in p4.measured


def test_a_study_whose_cell_cannot_run_finishes_the_rest_and_exits_nonzero(tmp_path, capsys):
    """Issue 25: a cell that cannot run (no dim passes lambda = 1000 on a random model) is a row with
    its reason; the baseline still runs; the command exits 1 with the failures listed."""
    out = tmp_path / "sweep"
    args = ["ablation", "--models", "tiny-llama", "--tasks", "kv_lookup", "--n", "4", "--lams", "1000",
            "--controls", "lowest", "--out", str(out)]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "2 cell(s) could not run" in err and "selected no dim" in err
    table = pd.read_parquet(out / "results.parquet")
    assert table.error.isna().sum() == 1 and table[table.error.isna()].condition.tolist() == ["baseline"]


def test_ablate_and_ablation_name_their_scorer(tmp_path, capsys):
    """Issue 26: a scorer is part of the protocol: ablate and the ablation study take --scorer, say
    which one they used, and a generating scorer's cells are their own (strict cells keep their keys)."""
    base = ["ablate", "--model", "tiny-llama", "--task", "kv_lookup", "--n", "3", "--rule", "topk", "--k", "2", "--json"]
    assert main([*base, "--scorer", "contains", "--max-new-tokens", "6"]) == 0
    assert json.loads(capsys.readouterr().out)["scorer"] == "contains"
    with pytest.raises(SystemExit):  # argparse names the choices
        main([*base, "--scorer", "fuzzy"])
    sweep = ["ablation", "--models", "tiny-llama", "--tasks", "kv_lookup", "sentiment", "--n", "3", "--rules", "topk",
             "--ks", "2", "--controls", "lowest", "--json"]
    assert main([*sweep, "--out", str(tmp_path / "s"), "--cells", str(tmp_path / "c")]) == 0
    capsys.readouterr()
    assert main([*sweep, "--scorer", "first-line", "--out", str(tmp_path / "g"), "--cells", str(tmp_path / "c")]) == 0
    rows = pd.DataFrame(json.loads(capsys.readouterr().out)["rows"])
    assert dict(zip(rows.task, rows.scorer, strict=False)) == {"kv_lookup": "first-line", "sentiment": "choice"}
    strict = pd.read_parquet(tmp_path / "s" / "results.parquet")
    assert set(strict[strict.task == "kv_lookup"].scorer) == {"strict"}
    # the choice task's cells are shared between the two runs; the exact task's are not
    shared = set(strict.key) & set(rows.key)
    assert shared == set(strict[strict.task == "sentiment"].key)
    from massmech.report.tables import ablation_text

    text = "\n".join(ablation_text(pd.read_parquet(tmp_path / "g" / "results.parquet"), "x"))
    assert "Scored by choice: the option" in text and "first-line: the gold" in text


def test_a_task_too_long_for_one_model_is_recorded_and_the_rest_finishes(tmp_path, capsys, monkeypatch):
    """Issue 25: a passkey longer than tiny-llama's context no longer aborts the sweep midway: its
    cells are rows with the reason, kv_lookup's cells run, and the command exits 1 naming them."""
    out = tmp_path / "sweep"
    args = ["ablation", "--models", "tiny-llama", "--tasks", "passkey", "kv_lookup", "--n", "3", "--rules", "topk",
            "--ks", "2", "--controls", "lowest", "--out", str(out)]
    import massmech.studies.ablation.study as study

    long, original = study.get_task("passkey", filler_repeats=400), study.get_task
    monkeypatch.setattr(study, "get_task", lambda name, **kw: long if name == "passkey" else original(name, **kw))
    assert main(args) == 1
    assert "more than tiny-llama's context" in capsys.readouterr().err
    table = pd.read_parquet(out / "results.parquet")
    assert table[table.task == "passkey"].error.notna().all() and table[table.task == "kv_lookup"].error.isna().all()


def test_a_sweep_says_when_a_task_has_fewer_examples_than_asked(tmp_path, capsys):
    """Issue 25: ablate and the ablation study follow one rule: a task with fewer examples than --n
    uses all it has, and both say so."""
    rows = tmp_path / "caps.jsonl"
    rows.write_text('{"q": "The capital of France is", "a": "Paris"}\n{"q": "The capital of Peru is", "a": "Lima"}\n')
    spec = f"file:{rows}#question=q&answer=a&name=caps"
    assert main(["ablation", "--models", "tiny-llama", "--tasks", spec, "--n", "10", "--rules", "topk", "--ks", "2",
                 "--controls", "lowest", "--out", str(tmp_path / "s")]) == 0
    assert "caps has 2 examples; all are used (asked for 10)" in capsys.readouterr().out
