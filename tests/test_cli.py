import json

import pandas as pd
import pytest

import massmech as mm
from massmech.cli import main
from massmech.jobs import AnalyzeConfig


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
    for site in ("q", "k", "v"):
        assert {"massive_count", "low_band_energy_fraction", "massive_low_band_share", "emergence_layer"} <= set(summary[site])
    assert set(summary["by_stage"]) == {"q.pre", "q.post", "k.pre", "k.post", "v.pre"}
    for name in ("stats.npz", "stats.parquet", "massive.parquet", "pairs.parquet", "layers.parquet", "manifest.json", "summary.json"):
        assert (out / name).is_file(), name
    for fig in ("heatmap", "bars3d", "emergence", "spectrum"):
        for ext in ("pdf", "png"):
            assert (out / "figures" / f"{fig}.{ext}").stat().st_size > 1000, fig
    manifest = json.loads((out / "manifest.json").read_text())
    cfg = AnalyzeConfig.from_json(json.dumps(manifest["config"]))
    assert cfg == AnalyzeConfig(model="tiny-llama", n_tokens=300, seq_len=64)
    assert manifest["model"]["name"] == "tiny-llama" and manifest["versions"]["torch"]
    stats = mm.QKVStats.load(out / "stats.npz")
    assert stats.n_tokens == 300
    assert len(pd.read_parquet(out / "stats.parquet")) == sum(t.numel() for t in stats.sumsq.values())
    assert [p.name for p in tmp_path.iterdir()] == ["run"]  # no temp folders left behind


def test_analyze_bad_input_leaves_nothing(tmp_path, capsys):
    out = tmp_path / "new" / "sub" / "run"  # not even the parents may appear
    assert main(["analyze", "--model", "tiny-llama", "--out", str(out), "--lam", "-1"]) == 2
    assert "lam must be > 0" in capsys.readouterr().err
    assert main(["analyze", "--model", "tiny-llama", "--out", str(out), "--layers", "7"]) == 2
    assert "layer 7 out of range" in capsys.readouterr().err
    assert main(["analyze", "--model", "tiny-gpt2", "--out", str(out)]) == 2
    assert "no rotary position embedding" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
    # parameters of the frequency analysis are checked before the capture, too
    from massmech.jobs import run_analyze

    with pytest.raises(ValueError, match="n_bands"):
        run_analyze(AnalyzeConfig(model="tiny-llama", n_bands=99), out)
    assert list(tmp_path.iterdir()) == []


def test_unwritable_out_under_a_file(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["analyze", "--model", "tiny-llama", "--out", str(blocker / "run")]) == 2
    assert "cannot create" in capsys.readouterr().err


def test_unknown_model(capsys):
    assert main(["doctor", "--model", "nope"]) == 2
    assert "unknown model spec" in capsys.readouterr().err


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


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--task", "capitals"], "unknown task"),
        (["--task", "nba_team_city", "--n", "500"], "at most"),
        (["--task", "kv_lookup", "--rule", "topk", "--k", "17"], "larger than d_head"),
        (["--task", "kv_lookup", "--stage", "post", "--model", "tiny-gpt2"], "no 'post' stage"),
        (["--task", "kv_lookup", "--layers", "0-9"], "out of range"),
    ],
)
def test_ablate_bad_input(extra, message, capsys, tmp_path):
    args = ["ablate", "--model", "tiny-llama", "--n", "4", "--out", str(tmp_path / "x"), *extra]
    assert main(args) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
