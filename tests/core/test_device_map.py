"""Sharded loading through accelerate's device maps: the bridge wraps a dispatched model as it is.

Without GPUs here, the map offloads a layer to disk: accelerate then moves its weights in on every
forward through the same hooks it uses to move activations between GPUs.
"""

from __future__ import annotations

import pytest
import torch

import massmech as mm
from massmech.core.loading import check_device_map, load_hf
from massmech.errors import ModelLoadError

OFFLOAD = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.layers.0": "cpu",
           "model.layers.1": "disk", "model.norm": "cpu", "lm_head": "cpu"}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    model, tok, _, _ = load_hf("tiny-llama")
    d = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return d


def _same_core_results(a, b):
    texts = ["the cat sat on the mat and the dog sat on the log", "one two three four five six"]
    return [mm.capture_stats(m, texts, progress=False) for m in (a, b)]


@pytest.mark.parametrize("how", ["folder", "tiny"])
def test_a_dispatched_model_gives_the_same_statistics(folder, tmp_path, how):
    plain = mm.load_model(str(folder) if how == "folder" else "tiny-llama")
    sharded = mm.load_model(str(folder) if how == "folder" else "tiny-llama", device_map=OFFLOAD,
                            offload_folder=tmp_path / "offload")
    assert sharded.load_kwargs["device_map"] == OFFLOAD
    assert any(p.device.type == "meta" for p in sharded.bridge.parameters())  # really offloaded to disk
    verdict = mm.doctor(sharded)
    assert verdict["ok"], verdict
    sa, sb = _same_core_results(plain, sharded)
    assert sa.sumsq.keys() == sb.sumsq.keys()
    for key in sa.sumsq:
        torch.testing.assert_close(sa.sumsq[key], sb.sumsq[key], rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(sa.max_abs[key], sb.max_abs[key], rtol=1e-5, atol=1e-7)


def test_device_maps_are_checked_before_loading():
    assert check_device_map("auto") == "auto"
    with pytest.raises(ModelLoadError, match="not both"):
        mm.load_model("tiny-llama", device="cpu", device_map="auto")
    with pytest.raises(ModelLoadError, match="unknown device_map"):
        mm.load_model("tiny-llama", device_map="everywhere")
    with pytest.raises(ModelLoadError, match="offload_folder"):
        mm.load_model("tiny-llama", device_map=OFFLOAD)
    with pytest.raises(ModelLoadError, match="not available|CUDA"):
        mm.load_model("tiny-llama", device_map={"model": "cuda:3", "lm_head": "cpu"})


def test_cli_commands_take_the_placement_flags(tmp_path, capsys):
    import json

    from massmech.cli import main
    from massmech.infra.cells import CellStore
    from massmech.studies.registry import get_study

    dm = json.dumps(OFFLOAD)
    assert main(["ablate", "--model", "tiny-llama", "--task", "kv_lookup", "--n", "4", "--rule", "topk", "--k", "2",
                 "--device-map", dm, "--offload-folder", str(tmp_path / "off"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)
    assert main(["doctor", "--model", "tiny-llama", "--device-map", dm, "--offload-folder", str(tmp_path / "off2"),
                 "--json"]) == 0
    verdict = json.loads(capsys.readouterr().out)
    assert verdict["ok"] and verdict["max_abs_logit_diff"] is not None  # compared with a sharded reference
    assert main(["ablation", "--preset", "main", "--models", "tiny-llama", "--tasks", "kv_lookup", "--n", "4",
                 "--rules", "topk", "--ks", "2", "--controls", "lowest", "--dtype", "bfloat16",
                 "--out", str(tmp_path / "sweep"), "--json"]) == 0
    store = CellStore(tmp_path / "sweep" / "cells", "ablation", version=get_study("ablation").version)
    assert {store.get(k).meta["parts"]["model"] for k in store.keys()} == {"tiny-llama@bfloat16"}
    rows = json.loads(capsys.readouterr().out)["rows"]  # --json carries the results, not only counts
    assert len(rows) == 3 and {r["task"] for r in rows} == {"kv_lookup"} and "p_holm" in rows[0]
    assert main(["ablation", "--models", "tiny-llama", "--out", str(tmp_path / "x"), "--device", "cpu", "--device-map", "auto"]) != 0
    assert "not both" in capsys.readouterr().err and not (tmp_path / "x").exists()  # refused before any work
