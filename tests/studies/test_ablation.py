"""Sweeps: one tidy table, resumable after an interruption, atomic, clear errors."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from massmech.errors import RunDirError
from massmech.studies.ablation import SweepConfig, layer_range, preset, run_sweep
from massmech.studies.ablation import study as sweeps

CFG = SweepConfig(
    models=("tiny-llama",), tasks=("kv_lookup", "sentiment"), n=6, rules=("topk",), ks=(1, 3),
    layer_ranges=("all", "late"), controls=("lowest", "random"),
)


def test_sweep_table_and_resume_after_interrupt(tmp_path, monkeypatch):
    full = run_sweep(CFG, tmp_path / "a", progress=False)
    n_cells = 2 * (1 + 2 * 2 * 3)  # tasks x (baseline + ks x ranges x (massive + 2 controls))
    assert len(full) == n_cells == len(list((tmp_path / "a" / "cells" / "ablation").glob("*/cell.json")))
    assert set(full.role) == {"baseline", "massive", "control"} and (full.n == 6).all()
    assert not full.duplicated(["task", "condition"]).any()
    assert (tmp_path / "a" / "manifest.json").exists()
    disrupted = full[full.role != "baseline"]
    assert disrupted.lam.isna().all() and disrupted.k.notna().all()  # top-k rows carry no lambda

    calls = {"n": 0}
    real = sweeps.score

    def dying(*a, **k):  # the second (model, task) group is killed midway
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(sweeps, "score", dying)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(CFG, tmp_path / "b", progress=False)
    partial = list((tmp_path / "b" / "cells" / "ablation").glob("*/cell.json"))
    assert len(partial) == n_cells // 2  # the finished group survived, nothing half-written
    assert not list((tmp_path / "b" / "cells" / "ablation").glob(".tmp*"))
    monkeypatch.setattr(sweeps, "score", real)
    calls["n"] = 0
    resumed = run_sweep(CFG, tmp_path / "b", progress=False)
    key = ["task", "condition"]
    a = full.sort_values(key).reset_index(drop=True)
    b = resumed.sort_values(key).reset_index(drop=True)
    assert a.equals(b)

    # a rerun finds everything done: nothing is evaluated again
    monkeypatch.setattr(sweeps, "score", lambda *a, **k: pytest.fail("recomputed a finished cell"))
    again = run_sweep(CFG, tmp_path / "b", progress=False)
    assert again.sort_values(key).reset_index(drop=True).equals(a)


def test_cells_record_verdicts_and_controls_match_counts(tmp_path):
    cfg = SweepConfig(models=("tiny-qwen2",), tasks=("kv_lookup",), n=5, rules=("topk",), ks=(2,), controls=("band-low",))
    t = run_sweep(cfg, tmp_path, progress=False).set_index("role")
    assert t.loc["massive", "n_dims"] == t.loc["control", "n_dims"] > 0
    cell = json.loads((tmp_path / "cells" / "ablation" / t.loc["massive", "key"] / "cell.json").read_text())["data"]
    assert len(cell["verdicts"]) == 5 and cell["disruption"]["k"] == 2


def test_shared_cell_store_reuses_common_cells(tmp_path, monkeypatch):
    store = tmp_path / "store"
    a = run_sweep(CFG, tmp_path / "a" / "nested", cells=store, progress=False)  # out is created
    assert (tmp_path / "a" / "nested" / "results.parquet").exists()
    small = SweepConfig(models=("tiny-llama",), tasks=("kv_lookup",), n=6, rules=("topk",), ks=(3,), controls=("random",))
    monkeypatch.setattr(sweeps, "score", lambda *a, **k: pytest.fail("recomputed a cell the store holds"))
    b = run_sweep(small, tmp_path / "b", cells=store, progress=False)
    assert len(b) == 3 and set(b.key) <= set(a.key)


def test_another_runs_cells_folder_is_shared_as_it_is(tmp_path, monkeypatch):
    a = run_sweep(CFG, tmp_path / "a", progress=False)  # its cells live in a/cells (no manifest of their own)
    small = SweepConfig(models=("tiny-llama",), tasks=("kv_lookup",), n=6, rules=("topk",), ks=(3,), controls=("random",))
    monkeypatch.setattr(sweeps, "score", lambda *a, **k: pytest.fail("recomputed a cell the other run holds"))
    b = run_sweep(small, tmp_path / "b", cells=tmp_path / "a" / "cells", progress=False)
    assert len(b) == 3 and set(b.key) <= set(a.key)
    assert not (tmp_path / "a" / "cells" / "manifest.json").exists()  # the other run's folder is not restamped
    user = tmp_path / "mine" / "cells"
    user.mkdir(parents=True)
    (user / "notes.txt").write_text("mine")
    with pytest.raises(RunDirError, match="not a massmech run folder"):  # a user's folder named cells: still refused
        run_sweep(small, tmp_path / "c", cells=user, progress=False)


def test_coinciding_grid_points_are_one_cell(tmp_path):
    # on a 2-layer model "middle" and "late" are both layer 1: one cell, not two
    cfg = SweepConfig(models=("tiny-llama",), tasks=("kv_lookup",), n=4, rules=("topk",), ks=(2, 2),
                      layer_ranges=("middle", "late"), controls=("lowest",))
    t = run_sweep(cfg, tmp_path, progress=False)
    assert len(t) == 3 and t.key.is_unique


def test_layer_ranges():
    assert layer_range("all", 30) is None
    assert layer_range("early", 30) == tuple(range(10)) and layer_range("late", 30) == tuple(range(20, 30))
    assert layer_range("middle", 2) == (1,) and layer_range("3-5", 30) == (3, 4, 5)
    with pytest.raises(ValueError, match="out of range"):
        layer_range("3-40", 30)


def test_bad_sweeps(tmp_path):
    with pytest.raises(ValueError, match="unknown task"):
        SweepConfig(tasks=("nope",))
    with pytest.raises(ValueError, match="unknown control"):
        SweepConfig(controls=("highest",))
    with pytest.raises(ValueError, match="layer range"):
        SweepConfig(layer_ranges=("first",))
    with pytest.raises(ValueError, match="needs lams"):
        SweepConfig(lams=())
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(RunDirError):
        run_sweep(CFG, blocker / "out", progress=False)
    assert SweepConfig.from_json(CFG.to_json()) == CFG


def test_cells_of_an_older_schema_version_are_recomputed(tmp_path, monkeypatch):
    from massmech.studies.ablation.study import ABLATION

    cfg = SweepConfig(models=("tiny-llama",), tasks=("kv_lookup",), n=4, rules=("topk",), ks=(2,), controls=("lowest",))
    monkeypatch.setattr(ABLATION, "version", ABLATION.version - 1)
    old = run_sweep(cfg, tmp_path, progress=False)  # written by "older code"
    monkeypatch.undo()
    calls = {"n": 0}
    real = sweeps.score

    def counting(*a, **k):
        calls["n"] += 1
        return real(*a, **k)

    monkeypatch.setattr(sweeps, "score", counting)
    new = run_sweep(cfg, tmp_path, progress=False)
    assert calls["n"] == 1  # every cell recomputed (one batched unit), none reused
    assert set(new.key).isdisjoint(old.key)
    from massmech.infra.cells import list_cells
    from massmech.studies.registry import cell_versions

    listing = list_cells(tmp_path / "cells", cell_versions())
    assert sorted(listing.current.tolist()) == [False] * 3 + [True] * 3


def test_massive_rows_are_tested_against_their_matched_control(tmp_path):
    """Issue 14, finding 1: does a massive condition hurt more than a control of the same size?"""
    import json as json_

    from massmech.stats import mcnemar_exact

    cfg = SweepConfig(models=("tiny-llama",), tasks=("kv_lookup",), n=8, rules=("topk",), ks=(2, 3),
                      controls=("matched", "lowest"))
    table = run_sweep(cfg, tmp_path / "s", progress=False)
    massive = table[table.role == "massive"]
    assert len(massive) == 2 and massive.p_vs_matched.between(0, 1).all()
    assert table[table.role != "massive"].p_vs_matched.isna().all()
    for r in massive.itertuples():  # the same numbers from the two cells' verdicts
        cells = {json_.loads((p / "cell.json").read_text())["data"]["condition"]: json_.loads((p / "cell.json").read_text())["data"]
                 for p in (tmp_path / "s" / "cells" / "ablation").iterdir()}
        mine, ctrl = cells[r.condition]["verdicts"], cells[f"{r.condition}.ctrl-matched-s0"]["verdicts"]
        uids = sorted(mine)
        assert (r.b_vs_matched, r.c_vs_matched, r.p_vs_matched) == mcnemar_exact(
            np.array([mine[u] for u in uids], float), np.array([ctrl[u] for u in uids], float))
    matched = table[table.control == "matched"].set_index("condition").removed_variance
    for r in massive.itertuples():  # matched in size
        assert abs(matched[f"{r.condition}.ctrl-matched-s0"] / r.removed_variance - 1) < 0.10


def test_paper_preset_takes_the_official_k_and_replacement_of_each_family(tmp_path, monkeypatch):
    cfg = preset("paper", models=("tiny-llama", "tiny-qwen2"), n=4, tasks=("kv_lookup",))
    t = run_sweep(cfg, tmp_path / "a", progress=False)
    assert set(t.scorer) == {"contains"}  # the paper's scorer: the answer anywhere in the greedy continuation
    massive = t[t.role == "massive"].set_index("model")
    assert massive.loc["tiny-llama", "k"] == 1 and massive.loc["tiny-qwen2", "k"] == 3
    disrupted = t[t.role != "baseline"]
    assert set(disrupted.stage) == {"post"} and disrupted.condition.str.contains("pooled_mean").all()
    # its variance-matched control is matched in size under the pooled scalar too
    matched = t[t.control == "matched"].set_index("model").removed_variance
    np.testing.assert_allclose(matched.loc[massive.index], massive.removed_variance, rtol=0.10)
    # Gemma-2: k = 22 set to zero; its lowest-norm control gets the pooled mean, as in the official code
    conds = {d.control: d for d, _ in cfg.disruptions(26, "Gemma2ForCausalLM")}
    assert (conds[None].k, conds[None].replace) == (22, "zero")
    assert (conds["lowest"].replace, conds["matched"].replace) == ("pooled_mean", "zero")
    # a family without an official setting is refused before any cell runs; ks with paper_settings too
    monkeypatch.setattr(sweeps, "score", lambda *a, **k: pytest.fail("ran a cell"))
    with pytest.raises(ValueError, match="no setting for Gemma3ForCausalLM"):
        run_sweep(preset("paper", models=("tiny-gemma3",), n=4, tasks=("kv_lookup",)), tmp_path / "b", progress=False)
    for wrong in (dict(ks=(3,)), dict(replace="zero")):  # never silently ignored
        with pytest.raises(ValueError, match="leave ks empty"):
            preset("paper", **wrong)
    assert preset("paper", ks=(3,), paper_settings=False).ks == (3,)


def test_a_unit_where_no_condition_can_run_records_each_error():
    """Every condition of a unit failing (a control with too few dims on a tiny model) is recorded, not a crash."""
    from massmech.errors import DisruptionError
    from massmech.studies.ablation.study import _each_that_runs

    def run(chosen):
        raise DisruptionError(f"cannot run {[c.key for c in chosen]}")

    class Cell:
        def __init__(self, key):
            self.key = key

    df, errors = _each_that_runs(run, [Cell("a"), Cell("b")])
    assert errors == {"a": "cannot run ['a']", "b": "cannot run ['b']"}
    assert len(df) == 0 and {"uid", "correct", "n_dims", "removed_variance"} <= set(df.columns)
    g = df[df.condition == "a"]
    assert {str(u): bool(v) for u, v in zip(g.uid, g.correct, strict=True)} == {}


def test_a_sweep_by_pair_and_by_coordinate(tmp_path):
    """granularities crosses every condition with dim and pair; pair rows are their own conditions,
    each tested against its own matched control, and the dim rows are the cells a dim-only sweep makes."""
    cfg = SweepConfig(models=("tiny-llama",), tasks=("kv_lookup",), n=4, rules=("topk",), ks=(1,), stages=("post",),
                      granularities=("dim", "pair"))
    t = run_sweep(cfg, tmp_path / "a", progress=False)
    massive = t[t.role == "massive"].set_index("condition")
    assert set(massive.index) == {"qk.post.top1", "qk.post.top1.pair"}
    assert massive.loc["qk.post.top1.pair", "granularity"] == "pair" and massive.loc["qk.post.top1", "granularity"] == "dim"
    assert massive.loc["qk.post.top1.pair", "n_dims"] == 2 * massive.loc["qk.post.top1", "n_dims"]
    assert "qk.post.top1.pair.ctrl-matched-s0" in set(t.condition)
    only_dim = run_sweep(replace(cfg, granularities=("dim",)), tmp_path / "b", progress=False)
    assert only_dim.set_index("condition").loc["qk.post.top1", "accuracy"] == massive.loc["qk.post.top1", "accuracy"]


def test_a_sweep_under_the_rank_scorer(tmp_path):
    """scorer="rank": exact tasks are ranked against their distractors (chance above 0, own cells,
    the scorer in every row); a task without distractors is refused before any folder or cell."""
    from massmech.errors import TaskError

    cfg = SweepConfig(models=("tiny-llama",), tasks=("kv_lookup", "sentiment"), n=4, rules=("topk",), ks=(1,),
                      controls=("lowest",), scorer="rank")
    t = run_sweep(cfg, tmp_path / "rank", progress=False)
    kv = t[t.task == "kv_lookup"]
    assert set(kv.scorer) == {"rank"} and (kv.chance > 0.1).all() and set(t[t.task == "sentiment"].scorer) == {"choice"}
    strict = run_sweep(replace(cfg, scorer="strict"), tmp_path / "strict", progress=False)
    assert set(strict[strict.task == "kv_lookup"].chance) == {0.0}  # other cells, other chance
    with pytest.raises(TaskError, match="no distractors"):
        run_sweep(replace(cfg, tasks=("passkey",)), tmp_path / "passkey", progress=False)
    assert not (tmp_path / "passkey" / "cells").exists()


def test_a_control_matched_in_effect_sits_beside_the_size_matched_one(tmp_path, monkeypatch):
    """Issue 26.2: the kl control is the matched one scaled to the massive condition's KL on neutral
    text, found once per model and condition (not per task); its row and its massive row show KL,
    removed variance and energy of both arms, and the massive row is tested against it too."""
    import json as json_

    from massmech.causal import klmatch
    from massmech.stats import mcnemar_exact

    searches = []
    real = sweeps.neutral_kl_match
    monkeypatch.setattr(sweeps, "neutral_kl_match", lambda *a, **k: (searches.append(a[1].label()), real(*a, **k))[1])
    cfg = SweepConfig(models=("tiny-llama",), tasks=("kv_lookup", "passkey"), n=6, rules=("topk",), ks=(1,),
                      controls=("matched", "kl"))
    t = run_sweep(cfg, tmp_path / "s", progress=False)
    assert searches == ["qk.pre.top1"]  # one search serves both tasks
    assert sorted(t.control.dropna().unique()) == ["kl", "matched"] and (t.control == "kl").sum() == 2
    kl = t[t.control == "kl"].iloc[0]
    found = klmatch.neutral_kl_match(__import__("massmech").load_model("tiny-llama"),
                                     __import__("massmech").Disruption(rule="topk", k=1))
    assert kl.condition == found.control.label() and kl.kl_scale == found.control.control_scale
    assert kl.kl_matched and abs(kl.kl_control / kl.kl_massive - 1) <= 0.10
    for task in ("kv_lookup", "passkey"):
        m = t[(t.task == task) & (t.role == "massive")].iloc[0]
        assert (m.kl_massive, m.kl_control, m.removed_energy_massive) == (kl.kl_massive, kl.kl_control,
                                                                          kl.removed_energy_massive)
        cells = {json_.loads((p / "cell.json").read_text())["data"]["key"]: json_.loads((p / "cell.json").read_text())["data"]
                 for p in (tmp_path / "s" / "cells" / "ablation").iterdir()}
        mine = cells[m.key]["verdicts"]
        other = cells[t[(t.task == task) & (t.control == "kl")].key.iloc[0]]["verdicts"]
        uids = sorted(mine)
        assert (m.b_vs_kl, m.c_vs_kl, m.p_vs_kl) == mcnemar_exact(np.array([mine[u] for u in uids], float),
                                                                  np.array([other[u] for u in uids], float))
    # the size-matched comparison is untouched by the kl row (a scale of 1 would share its grid point)
    plain = run_sweep(replace(cfg, controls=("matched",)), tmp_path / "plain", progress=False)
    cols = ["task", "condition", "accuracy", "b_vs_matched", "c_vs_matched", "p_vs_matched"]
    assert t[t.control != "kl"][cols].reset_index(drop=True).equals(plain[cols].reset_index(drop=True))


def test_a_kl_control_that_cannot_be_found_records_why_and_leaves_the_matched_one_alone(tmp_path, monkeypatch):
    from massmech.errors import DisruptionError

    def refuse(*args, **kwargs):
        raise DisruptionError("too few dims to draw from")

    monkeypatch.setattr(sweeps, "neutral_kl_match", refuse)
    cfg = SweepConfig(models=("tiny-llama",), tasks=("kv_lookup",), n=6, rules=("topk",), ks=(1,),
                      controls=("matched", "kl"))
    t = run_sweep(cfg, tmp_path / "s", progress=False)
    kl = t[t.control == "kl"].iloc[0]
    assert "no KL-matched control: too few dims to draw from" in kl.error and kl.n == 0
    massive = t[t.role == "massive"].iloc[0]
    assert massive.b_vs_matched + massive.c_vs_matched >= 0 and massive.p_vs_matched == massive.p_vs_matched
    assert pd.isna(massive.p_vs_kl) and pd.isna(massive.kl_massive)
