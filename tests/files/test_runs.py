"""Output folders: massmech never deletes or writes into a folder it did not write (issue: data safety)."""

import dataclasses
import json
import os
import stat

import pytest

from massmech.cli import main
from massmech.errors import RunDirError
from massmech.files.io import atomic_write
from massmech.files.runs import atomic_run_dir, check_out, open_study_dir, read_manifest

ANALYZE = ["analyze", "--model", "tiny-llama", "--tokens", "128", "--seq-len", "64", "--json"]


def _no_model(monkeypatch):
    """Any model load fails the test: the output folder must be refused before any compute."""
    import massmech.core.loading
    import massmech.studies.ablation
    import massmech.studies.analyze  # imported before patching: a module imported meanwhile would keep `boom`
    import massmech.studies.quant.study
    import massmech.studies.twins.study

    def boom(*a, **k):
        raise AssertionError("a model was loaded before the output folder was checked")

    for mod in (massmech.core.loading, massmech.studies.ablation, massmech.studies.analyze, massmech.studies.quant.study):
        if hasattr(mod, "load_model"):  # studies on the protocol load through massmech.core.loading
            monkeypatch.setattr(mod, "load_model", boom)


@pytest.mark.parametrize("command", [
    ANALYZE,
    ["ablate", "--model", "tiny-llama", "--task", "kv_lookup", "--n", "4"],
    ["twins", "--preset", "tiny"],
    ["quantize", "--model", "tiny-llama", "--method", "rtn", "--tasks", "kv_lookup", "--n", "4"],
])
@pytest.mark.parametrize("overwrite", [False, True])
def test_a_users_folder_is_never_touched(command, overwrite, tmp_path, capsys, monkeypatch):
    _no_model(monkeypatch)
    user = tmp_path / "mystuff"
    user.mkdir()
    (user / "notes.txt").write_text("my notes")
    args = [*command, "--out", str(user)] + (["--overwrite"] if overwrite and command[0] in ("analyze", "ablate") else [])
    assert main(args) == 2
    assert "not a massmech run folder" in capsys.readouterr().err
    assert sorted(p.name for p in user.iterdir()) == ["notes.txt"]
    assert (user / "notes.txt").read_text() == "my notes"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mystuff"]


def test_a_study_resumes_refuses_another_config_and_keeps_foreign_files(tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*ANALYZE, "--out", str(out)]) == 0
    first = read_manifest(out)
    assert first["run_kind"] == "analyze" and "stats.npz" in first["files"] and "figures/heatmap.png" in first["files"]
    # the same config again: resumed from its cell; another config: refused unless --overwrite
    assert main([*ANALYZE, "--out", str(out)]) == 0
    capsys.readouterr()
    assert main([*ANALYZE, "--heatmap-layers", "1", "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main([*ANALYZE, "--heatmap-layers", "1", "--out", str(out), "--overwrite"]) == 0
    capsys.readouterr()
    # a file the user put into a run, beside massmech's or inside one of its subfolders, is never deleted
    (out / "my_plot.png").write_text("mine")
    (out / "figures" / "mine.txt").write_text("mine")
    assert main([*ANALYZE, "--out", str(out), "--overwrite"]) == 0
    assert (out / "my_plot.png").read_text() == "mine" and (out / "figures" / "mine.txt").read_text() == "mine"
    assert "my_plot.png" not in read_manifest(out)["files"]
    # nor replaced: a file of the user's where massmech would write stops the run before anything moves
    (out / "figures" / "heatmap.png").unlink()
    (out / "figures" / "heatmap.png").write_text("mine too")
    manifest_before = (out / "manifest.json").read_text()
    read_manifest(out)
    data = json.loads(manifest_before)
    data["files"] = [f for f in data["files"] if f != "figures/heatmap.png"]  # as if massmech had not written it
    (out / "manifest.json").write_text(json.dumps(data))
    capsys.readouterr()
    assert main([*ANALYZE, "--out", str(out)]) == 2
    assert "figures/heatmap.png" in capsys.readouterr().err
    assert (out / "figures" / "heatmap.png").read_text() == "mine too"
    # a run of another kind is not an ablate run
    assert main(["ablate", "--model", "tiny-llama", "--task", "kv_lookup", "--n", "4", "--out", str(out), "--overwrite"]) == 2
    assert "'analyze' run, not a 'ablate' run" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no temp folders left
    assert not [p.name for p in out.iterdir() if p.name.startswith(".staged")]


def test_run_folder_gets_the_users_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        with atomic_run_dir(tmp_path / "r", "test") as tmp:
            (tmp / "a.txt").write_text("x")
    finally:
        os.umask(old)
    mode = stat.S_IMODE((tmp_path / "r").stat().st_mode)
    assert mode == 0o755, oct(mode)  # not mkdtemp's private 0o700


def test_empty_folder_is_fine_and_a_file_is_not(tmp_path):
    (tmp_path / "empty").mkdir()
    with atomic_run_dir(tmp_path / "empty", "test") as tmp:
        (tmp / "a.txt").write_text("x")
    assert (tmp_path / "empty" / "a.txt").is_file()
    (tmp_path / "f").write_text("x")
    with pytest.raises(RunDirError, match="not a folder"):
        check_out(tmp_path / "f", "test")


def test_unwritable_places_fail_before_compute(tmp_path, monkeypatch, capsys):
    """As root ``os.access`` says yes to /sys; a probe entry tells the truth."""
    _no_model(monkeypatch)
    assert main([*ANALYZE, "--out", "/sys/run"]) == 2
    err = capsys.readouterr().err
    assert "not writable" in err and "/sys" in err
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    if os.geteuid() == 0:  # root writes into a 0o555 folder: that is allowed, and the probe agrees
        check_out(ro / "run", "test")
    else:
        with pytest.raises(RunDirError, match="not writable"):
            check_out(ro / "run", "test")
    assert list(ro.iterdir()) == []  # the probe leaves nothing


def test_a_failed_block_leaves_nothing(tmp_path):
    with pytest.raises(ZeroDivisionError), atomic_run_dir(tmp_path / "r", "test") as tmp:
        (tmp / "a").write_text("x")
        raise ZeroDivisionError
    assert list(tmp_path.iterdir()) == []


def test_study_dirs_resume_only_their_own_kind(tmp_path):
    out = open_study_dir(tmp_path / "s", "sweep")
    assert read_manifest(out)["run_kind"] == "sweep"
    (out / "cells").mkdir()
    assert open_study_dir(out, "sweep") == out  # resumed
    with pytest.raises(RunDirError, match="'sweep' run, not a 'quant-study'"):
        open_study_dir(out, "quant-study")
    user = tmp_path / "u"
    user.mkdir()
    (user / "x").write_text("x")
    with pytest.raises(RunDirError, match="not a massmech run folder"):
        open_study_dir(user, "sweep")
    legacy = tmp_path / "legacy"  # a manifest without a run kind (older massmech, or not ours)
    legacy.mkdir()
    (legacy / "manifest.json").write_text(json.dumps({"config": {}}))
    with pytest.raises(RunDirError, match="not a massmech run folder"):
        check_out(legacy, "analyze", overwrite=True)


def test_entries_vanishing_meanwhile_are_not_an_error(tmp_path, monkeypatch):
    """Parallel workers of one run create and remove probe and .tmp entries while another checks it."""
    out = open_study_dir(tmp_path / "s", "twins")
    (out / "checkpoints").mkdir()
    (out / ".massmech-probe-1-abc").mkdir()  # listed, then gone before it is descended into
    real = os.scandir

    def scandir(path="."):
        if os.fspath(path).endswith(".massmech-probe-1-abc"):
            raise FileNotFoundError(2, "No such file or directory", os.fspath(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    assert check_out(out, "twins", resume=True) == out


def test_atomic_write_unique_temp_and_cleanup(tmp_path):
    target = tmp_path / "t.txt"
    names = []
    atomic_write(target, lambda p: (names.append(p.name), p.write_text("1")))
    atomic_write(target, lambda p: (names.append(p.name), p.write_text("2")))
    assert names[0] != names[1] and target.read_text() == "2"

    def broken(p):
        p.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, broken)
    assert target.read_text() == "2" and sorted(p.name for p in tmp_path.iterdir()) == ["t.txt"]


def test_sweep_refuses_user_folders(tmp_path, monkeypatch):
    from massmech.studies.ablation import SweepConfig, run_sweep

    _no_model(monkeypatch)
    user = tmp_path / "mine"
    user.mkdir()
    (user / "data.csv").write_text("a,b")
    cfg = SweepConfig(models=("tiny-llama",), tasks=("kv_lookup",), n=4, rules=("topk",), ks=(1,))
    with pytest.raises(RunDirError, match="not a massmech run folder"):
        run_sweep(cfg, user, progress=False)
    with pytest.raises(RunDirError, match="not a massmech run folder"):
        run_sweep(cfg, tmp_path / "new", cells=user, progress=False)
    assert sorted(p.name for p in user.iterdir()) == ["data.csv"]
    assert not (tmp_path / "new").exists()  # nothing created when an input is refused


def test_a_field_added_after_a_run_is_no_difference_at_its_default():
    """SweepConfig.granularities came after runs were made: their stored config lacks it, and a
    rerun at the default resumes; a rerun that sets it is another config."""
    from massmech.files.runs import config_diff
    from massmech.studies.ablation.config import SweepConfig

    old = dataclasses.asdict(SweepConfig(ks=(2,)))
    del old["granularities"]
    assert config_diff(old, SweepConfig(ks=(2,))) == []
    assert config_diff(old, SweepConfig(ks=(2,), granularities=("dim", "pair"))) == ["granularities"]
    assert config_diff(old, SweepConfig(ks=(3,))) == ["ks"]
