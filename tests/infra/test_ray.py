"""The Ray executor on a local Ray started inside the suite: same table as serial, a killed worker's
unit retried (nothing lost, nothing duplicated), a killed driver resumed from the store."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="the ray extra: pip install 'massmech[ray]'")

from massmech.errors import ConfigError  # noqa: E402
from massmech.infra.cells import CellStore  # noqa: E402
from massmech.infra.executors import EXECUTORS, RayExecutor, resolve_executor  # noqa: E402
from massmech.infra.study import Context, run_study  # noqa: E402
from massmech.studies.ablation import SweepConfig, run_sweep  # noqa: E402

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def local_ray():
    # workers import the toy study of this folder (test_study.Squares) by reference
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(HERE), *([old] if old else [])])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()
    if old is None:
        os.environ.pop("PYTHONPATH", None)
    else:
        os.environ["PYTHONPATH"] = old


def _squares():
    sys.path.insert(0, str(HERE))
    try:
        from test_study import SQUARES
    finally:
        sys.path.remove(str(HERE))
    return SQUARES


def test_tiny_sweep_on_ray_equals_serial(tmp_path, local_ray):
    cfg = SweepConfig(models=("tiny-llama", "tiny-qwen2"), tasks=("kv_lookup",), n=4, rules=("topk",), ks=(2,),
                      controls=("lowest",))
    serial = run_sweep(cfg, tmp_path / "serial", progress=False)
    on_ray = run_sweep(cfg, tmp_path / "ray", executor=RayExecutor(workers=2), progress=False)
    key = ["model", "task", "condition"]
    assert serial.sort_values(key, ignore_index=True).equals(on_ray.sort_values(key, ignore_index=True))
    from massmech.studies.registry import get_study

    ablation = get_study("ablation")
    store = CellStore(tmp_path / "ray" / "cells", ablation.name, version=ablation.version)
    assert len(store.keys()) == len(serial)


def test_a_worker_killed_mid_unit_is_retried_and_nothing_is_lost_or_duplicated(tmp_path, local_ray):
    squares = _squares()
    serial = run_study(squares, {"n": 8}, tmp_path / "serial", progress=False)
    marker = tmp_path / "marker"
    config = {"n": 8, "kill_at": 5, "marker": str(marker)}
    table = run_study(squares, config, tmp_path / "ray", executor=RayExecutor(workers=2, retries=2), progress=False)
    assert marker.exists()  # the worker holding unit 5 was killed once, in the middle of it
    assert table.equals(serial)
    store = CellStore(tmp_path / "ray" / "cells", squares.name, version=squares.version)
    assert sorted(store.get(k).data["i"] for k in store.keys()) == list(range(8))  # 0 lost, 0 duplicated
    pids = {store.get(k).data["pid"] for k in store.keys()}
    assert os.getpid() not in pids and len(pids) >= 2  # computed on Ray workers (incl. the restarted one)


def test_a_killed_driver_resumes_from_the_store(tmp_path, local_ray):
    """A driver process killed mid-sweep; the rerun computes only what is missing."""
    squares = _squares()
    out, slow = tmp_path / "ray", tmp_path / "slow"
    script = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(HERE)!r})
        from test_study import Squares
        from massmech.infra.executors import RayExecutor
        from massmech.infra.study import run_study

        class Slow(Squares):
            def run_unit(self, config, cells, ctx):
                time.sleep(0.5 * cells[0].payload)
                return super().run_unit(config, cells, ctx)

        run_study(Slow(), {{"n": 8}}, {str(out)!r}, executor=RayExecutor(workers=1), progress=False)
    """)
    slow.write_text(script)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    driver = subprocess.Popen([sys.executable, str(slow)], env=env)
    store = CellStore(out / "cells", "squares", version=1)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and driver.poll() is None and len(store.keys()) < 2:
        time.sleep(0.2)
    driver.kill()
    driver.wait()
    kept = len(store.keys())
    assert 0 < kept < 8, kept
    table = run_study(squares, {"n": 8}, out, executor=RayExecutor(workers=2), progress=False)
    assert table.equals(run_study(squares, {"n": 8}, tmp_path / "serial", progress=False))
    assert len(store.keys()) == 8


def test_ray_settings_are_checked_before_any_work(tmp_path, local_ray):
    import massmech as mm

    assert "ray" in EXECUTORS and isinstance(resolve_executor("ray", workers=2), RayExecutor)
    with pytest.raises(ConfigError, match="workers"):
        RayExecutor(workers=0)
    with pytest.raises(ConfigError, match="GPUs"):  # the local Ray has no GPU
        run_study(_squares(), {"n": 2}, tmp_path / "gpu", executor=RayExecutor(gpus=1), progress=False)
    ctx = Context(models={"tiny-llama": mm.load_model("tiny-llama")})
    with pytest.raises(ConfigError, match="this process only"):
        run_study(_squares(), {"n": 2}, tmp_path / "x", executor="ray", ctx=ctx, progress=False)


def test_cli_offers_the_executors_the_package_has():
    from massmech.cli import build_parser

    for study in ("ablation", "quant", "twins", "analyze"):
        parser = build_parser(study)
        action = next(a for a in parser._subparsers._group_actions[0].choices[study]._actions if a.dest == "executor")
        assert tuple(action.choices) == EXECUTORS, study


def test_twins_train_one_variant_per_ray_worker_like_one_process(tmp_path, local_ray):
    """The twins' variants as cells on Ray: bit for bit the in-process training."""
    from massmech.studies.twins.config import TwinsConfig
    from massmech.studies.twins.study import train_all

    cfg = TwinsConfig(d_model=32, n_layers=2, n_heads=2, d_mlp=64, context=32, batch_size=4, steps=4, warmup=1,
                      vocab_size=300, checkpoints=(4,), analysis_tokens=256, eval_examples=4)
    on_ray = train_all(cfg, tmp_path / "ray", variants=["rope", "nope"], executor=RayExecutor(workers=2),
                       device="cpu", progress=False)
    here = train_all(cfg, tmp_path / "here", variants=["rope", "nope"], device="cpu", progress=False)
    assert on_ray == here and len(on_ray["nope"]) == 4


def _pids(out: Path, n: int) -> set[int]:
    store = CellStore(out / "cells", "squares", version=1)
    assert len(store.keys()) == n
    return {store.get(k).data["pid"] for k in store.keys()}


def test_a_session_keeps_its_workers_from_run_to_run_and_ends_them_at_its_end(tmp_path, local_ray):
    """`with executor:` (what reproduce and a study's phases use): the second run is computed by
    the first run's actors, not new ones; outside a session every run starts its own."""
    squares = _squares()
    config = {"n": 6, "sleep": 0.5}  # units long enough that both actors start before either is done
    serial = run_study(squares, config, tmp_path / "serial", progress=False)
    ex = RayExecutor(workers=2)
    with ex:
        first = run_study(squares, config, tmp_path / "a", executor=ex, progress=False)
        second = run_study(squares, config, tmp_path / "b", executor=ex, progress=False)
        pool = list(ex._pool)
        assert len(pool) == 2 and _pids(tmp_path / "b", 6) <= set(ray.get([a.pid.remote() for a in pool]))
    assert first.equals(serial) and second.equals(serial)
    assert _pids(tmp_path / "a", 6) == _pids(tmp_path / "b", 6)
    assert ex._pool == [] and ray.is_initialized()  # actors gone; the Ray this session did not start is left running
    with pytest.raises(ray.exceptions.RayActorError):
        ray.get(pool[0].pid.remote(), timeout=30)
    run_study(squares, {"n": 6}, tmp_path / "c", executor=ex, progress=False)  # no session: fresh actors
    assert not _pids(tmp_path / "c", 6) & _pids(tmp_path / "a", 6)


def test_more_workers_than_the_cluster_places_never_hang_a_session(tmp_path):
    """4 actors asked of a 2-CPU Ray: two wait for resources. An actor with nothing left is killed
    while one of this run may still wait (else the waiting ones would never be placed), and the
    session's runs all finish."""
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(HERE)!r})
        import ray
        from test_study import SQUARES, Squares
        from massmech.infra.executors import RayExecutor
        from massmech.infra.study import run_study

        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        with RayExecutor(workers=4) as ex:
            for name in ("a", "b"):
                table = run_study(SQUARES, {{"n": 8}}, {str(tmp_path)!r} + "/" + name, executor=ex, progress=False)
                assert table.square.tolist() == [i * i for i in range(8)]
        print("FINISHED")
    """)
    (tmp_path / "run.py").write_text(script)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, str(tmp_path / "run.py")], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0 and "FINISHED" in done.stdout, done.stderr[-3000:]
