"""The study protocol and its executors: same table serially or in processes; kills lose only units in flight."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pandas as pd
import pytest

from massmech.errors import ConfigError, RunDirError
from massmech.files.runs import study_lock
from massmech.infra.cells import CellStore, cell_key
from massmech.infra.executors import ProcessExecutor, resolve_executor
from massmech.infra.study import CellSpec, run_study
from massmech.studies.ablation import SweepConfig, run_sweep


class Squares:
    """A toy study: cell i holds i*i; groups 'even'/'odd'; a marker file makes one unit kill its worker."""

    name = "squares"
    version = 1

    def plan(self, config, ctx):
        cells = []
        for i in range(config["n"]):
            parts = {"toy": "squares", "i": i}
            group = "even" if i % 2 == 0 else "odd"
            cells.append(CellSpec(cell_key(self.name, parts, version=self.version), parts, group=group, unit=str(i),
                                  payload=i))
        return cells

    def run_unit(self, config, cells, ctx):
        out = {}
        for c in cells:
            if c.payload == config.get("kill_at") and not Path(config["marker"]).exists():
                Path(config["marker"]).write_text("killed once")
                os._exit(1)  # a worker killed in the middle of a unit
            time.sleep(config.get("sleep", 0))
            out[c.key] = ({"i": c.payload, "square": c.payload ** 2, "pid": os.getpid()}, {})
        return out

    def consolidate(self, config, cells):
        rows = [{"i": c.data["i"], "square": c.data["square"]} for c in cells.values()]
        return pd.DataFrame(rows).sort_values("i", ignore_index=True)

    def finish(self, config, table, out, ctx):
        return {"n": len(table)}


SQUARES = Squares()


def test_processes_equal_serial_and_a_killed_worker_resumes(tmp_path):
    serial = run_study(SQUARES, {"n": 8}, tmp_path / "serial", progress=False)
    config = {"n": 8, "kill_at": 5, "marker": str(tmp_path / "marker")}
    with pytest.raises(Exception):  # noqa: B017 - the pool reports the dead worker (BrokenProcessPool)
        run_study(SQUARES, config, tmp_path / "par", executor=ProcessExecutor(workers=2, threads=1), progress=False)
    store = CellStore(tmp_path / "par" / "cells", "squares", version=1)
    kept = store.keys()
    assert 0 < len(kept) < 8  # the other worker's cells and the dead worker's finished units survived
    resumed = run_study(SQUARES, config, tmp_path / "par", executor="processes", progress=False)
    assert resumed.equals(serial) and len(store.keys()) == 8  # nothing lost, nothing duplicated
    pids = {store.get(k).data["pid"] for k in store.keys()}
    assert os.getpid() not in pids and len(pids) >= 2  # computed in worker processes


def test_sweep_in_processes_equals_serial(tmp_path):
    cfg = SweepConfig(models=("tiny-llama", "tiny-qwen2"), tasks=("kv_lookup",), n=4, rules=("topk",), ks=(2,),
                      controls=("lowest",))
    a = run_sweep(cfg, tmp_path / "a", progress=False)
    b = run_sweep(cfg, tmp_path / "b", executor=ProcessExecutor(workers=2, threads=1), progress=False)
    key = ["model", "task", "condition"]
    assert a.sort_values(key, ignore_index=True).equals(b.sort_values(key, ignore_index=True))
    assert (tmp_path / "b" / "summary.json").exists() and (tmp_path / "b" / "results.csv").exists()


def test_executor_names_are_checked():
    with pytest.raises(ConfigError, match="unknown executor"):
        resolve_executor("ray-cluster")
    with pytest.raises(ConfigError, match="workers"):
        ProcessExecutor(workers=0)


def test_models_passed_in_cannot_go_to_worker_processes(tmp_path):
    import massmech as mm
    from massmech.infra.study import Context

    ctx = Context(models={"tiny-llama": mm.load_model("tiny-llama")})
    with pytest.raises(ConfigError, match="this process only"):
        run_study(SQUARES, {"n": 2}, tmp_path / "x", executor="processes", ctx=ctx, progress=False)


def test_units_are_routed_by_model_and_large_groups_split_over_idle_workers():
    from massmech.infra.executors import _assign

    def unit(group, i, cells=1):
        return [CellSpec(f"{group}{i}-{j}", {}, group, str(i)) for j in range(cells)]

    one_model = [unit("a", i, 3) for i in range(4)]
    assert sorted(sum(map(len, w)) for w in _assign(one_model, 2)) == [6, 6]  # both workers busy
    two = [unit("a", i) for i in range(2)] + [unit("b", i) for i in range(2)]
    assert [{u[0].group for u in w} for w in _assign(two, 2)] in ([{"a"}, {"b"}], [{"b"}, {"a"}])  # one model each
    assert sum(map(len, _assign(two, 16))) == 4 and len(_assign(two, 16)) == 4  # never more workers than units


def _drain(schedule, workers, seconds, load):
    """Simulate ``workers`` free workers on ``schedule``: each unit takes ``seconds[group]`` per cell,
    a model ``load[group]`` to load. Returns (units handed out, loads, makespan)."""
    import heapq

    clock = [(0.0, w, None) for w in range(workers)]
    handed, loads, end = [], [], 0.0
    while clock:
        t, w, holding = heapq.heappop(clock)
        nxt = schedule.next(holding)
        if nxt is None:
            end = max(end, t)
            continue
        group, unit = nxt
        extra = load[group] if group != holding else 0.0
        loads += [group] if group != holding else []
        took = seconds[group] * len(unit)
        schedule.record(group, cells=len(unit), seconds=took, load_seconds=extra if extra else None)
        handed.append(unit)
        heapq.heappush(clock, (t + extra + took, w, group))
    return handed, loads, end


def test_the_unit_scheduler_hands_out_every_unit_once_and_loads_a_model_twice_only_when_it_pays():
    from massmech.infra.executors import UnitScheduler

    def units(group, n):
        return [[CellSpec(f"{group}{i}", {}, group, str(i))] for i in range(n)]

    work = units("big", 8) + units("small", 2)
    handed, loads, end = _drain(UnitScheduler(work, 2), 2, {"big": 1.0, "small": 1.0}, {"big": 0.1, "small": 0.1})
    assert sorted(u[0].key for u in handed) == sorted(u[0].key for u in work)  # each unit exactly once
    assert loads.count("big") == 2 and end < 6.5  # cheap load: the free worker joins; the bound by model is 8
    handed, loads, end = _drain(UnitScheduler(work, 2), 2, {"big": 1.0, "small": 1.0}, {"big": 50.0, "small": 0.1})
    assert len(handed) == 10 and loads.count("big") == 1  # a load that costs more than the work left: never twice
    prior = {"big": {"load_seconds": 50.0, "cell_seconds": 1.0}}
    s = UnitScheduler(units("big", 8), 2, prior=prior)  # two workers, one model, a load dearer than the work
    assert s.next(None)[0] == "big" and s.next(None) is None
    s = UnitScheduler(units("big", 8), 2)  # nothing measured: split by share of the cells, as before
    assert s.next(None)[0] == "big" and s.next(None)[0] == "big"


def test_the_manifest_says_when_the_numbers_were_made_and_a_rebuild_keeps_it(tmp_path):
    run_study(SQUARES, {"n": 3}, tmp_path / "first", progress=False)
    made = json.loads((tmp_path / "first" / "manifest.json").read_text())["cells_created"]
    assert made["first"] <= made["last"]
    time.sleep(1.1)  # manifests record seconds
    run_study(SQUARES, {"n": 3}, tmp_path / "rebuilt", cells=tmp_path / "first" / "cells", progress=False)
    again = json.loads((tmp_path / "rebuilt" / "manifest.json").read_text())
    assert again["cells_created"] == made and again["created"] > made["last"]


def test_cells_keep_their_timing_for_the_next_plan(tmp_path):
    run_study(SQUARES, {"n": 4}, tmp_path / "run", progress=False)
    store = CellStore(tmp_path / "run" / "cells", SQUARES.name, version=SQUARES.version)
    timings = store.timings()
    assert set(timings) == {"even", "odd"} and all(t["cell_seconds"] >= 0 for t in timings.values())


def test_another_config_into_the_same_folder_is_refused_before_any_work(tmp_path):
    out = tmp_path / "run"
    first = run_study(SQUARES, {"n": 4}, out, progress=False)
    before = (out / "results.parquet").read_bytes()

    class Counting(Squares):
        planned = 0

        def plan(self, config, ctx):
            Counting.planned += 1
            return super().plan(config, ctx)

    with pytest.raises(RunDirError, match="another config.*differs in n.*--overwrite"):
        run_study(Counting(), {"n": 2}, out, progress=False)
    assert Counting.planned == 0 and (out / "results.parquet").read_bytes() == before  # nothing ran, nothing lost
    again = run_study(SQUARES, {"n": 4}, out, progress=False)  # the same config resumes
    assert again.equals(first)
    replaced = run_study(SQUARES, {"n": 2}, out, progress=False, overwrite=True)
    assert len(replaced) == 2 and len(pd.read_parquet(out / "results.parquet")) == 2


def test_a_second_writer_of_one_folder_is_locked_out(tmp_path):
    out = tmp_path / "run"
    run_study(SQUARES, {"n": 2}, out, progress=False)
    with study_lock(out):  # another process writing it now (flock is per open file: same effect)
        with pytest.raises(RunDirError, match="another massmech process .* is writing"):
            run_study(SQUARES, {"n": 2}, out, progress=False)
    run_study(SQUARES, {"n": 2}, out, progress=False)  # free again once it ends


def test_the_sweep_cli_refuses_another_config(tmp_path, capsys):
    from massmech.cli import main

    out = str(tmp_path / "sweep")
    common = ["ablation", "--preset", "k", "--models", "tiny-llama", "--tasks", "kv_lookup", "--n", "2", "--out", out]
    assert main([*common, "--ks", "2,4"]) == 0
    rows = len(pd.read_parquet(Path(out) / "results.parquet"))
    assert main([*common, "--ks", "3"]) == 2
    assert "differs in ks" in capsys.readouterr().err
    assert len(pd.read_parquet(Path(out) / "results.parquet")) == rows
    assert main([*common, "--ks", "3", "--overwrite"]) == 0
    assert len(pd.read_parquet(Path(out) / "results.parquet")) < rows
