import json

import pandas as pd
import pytest

import massmech as mm
from massmech.cli import main
from massmech.jobs import DetectConfig


def test_doctor_json_on_tiny(capsys):
    assert main(["doctor", "--model", "tiny-gemma3", "--json"]) == 0
    verdict = json.loads(capsys.readouterr().out)
    assert verdict["ok"] is True
    assert verdict["max_abs_logit_diff"] <= 1e-4
    assert verdict["rope_bases"] == pytest.approx([1e4, 1e4, 1e6], rel=1e-5)
    assert verdict["checks"] == {"logits_match": True, "hooks_fire": True, "rope_verified": True}


def test_doctor_no_rope_model(capsys):
    assert main(["doctor", "--model", "tiny-gpt2", "--json"]) == 0
    verdict = json.loads(capsys.readouterr().out)
    assert verdict["rope_bases"] == [] and "rope_verified" not in verdict["checks"]


def test_detect_end_to_end(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["detect", "--model", "tiny-llama", "--out", str(out), "--tokens", "300", "--seq-len", "64", "--json"]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["n_tokens"] == 300 and summary["out_dir"] == str(out.resolve())
    assert set(summary["sites"]) == {"q.pre", "q.post", "k.pre", "k.post", "v.pre"}
    for name in ("stats.npz", "stats.parquet", "massive.parquet", "by_layer.csv", "manifest.json", "summary.json"):
        assert (out / name).is_file(), name
    manifest = json.loads((out / "manifest.json").read_text())
    assert DetectConfig(**manifest["config"]) == DetectConfig(model="tiny-llama", n_tokens=300, seq_len=64)
    assert manifest["model"]["name"] == "tiny-llama" and manifest["versions"]["torch"]
    stats = mm.QKVStats.load(out / "stats.npz")
    assert stats.n_tokens == 300
    assert len(pd.read_parquet(out / "stats.parquet")) == sum(t.numel() for t in stats.sumsq.values())
    assert [p.name for p in tmp_path.iterdir()] == ["run"]  # no temp folders left behind


def test_detect_bad_input_leaves_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["detect", "--model", "tiny-llama", "--out", str(out), "--lam", "-1"]) == 2
    assert "lam must be > 0" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_unwritable_out_under_a_file(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["detect", "--model", "tiny-llama", "--out", str(blocker / "run")]) == 2
    assert "cannot create" in capsys.readouterr().err


def test_unknown_model(capsys):
    assert main(["doctor", "--model", "nope"]) == 2
    assert "unknown model spec" in capsys.readouterr().err


def test_config_json_roundtrip():
    cfg = DetectConfig(model="tiny-qwen2", lam=3.0)
    assert DetectConfig.from_json(cfg.to_json()) == cfg
