"""reproduce resumes every run from the cells it already has, wherever the run keeps them."""

from __future__ import annotations

import dataclasses
import json

import pytest

from massmech.files.io import MANIFEST
from massmech.files.runs import CELLS_KEY, cells_of
from massmech.report.reproduce import run_all
from massmech.report.runs import config_of, run_folder
from massmech.studies.ablation import run_sweep
from massmech.studies.ablation import study as sweeps

MODEL = "tiny-llama"


@pytest.mark.parametrize("where", ["own", "elsewhere", "own, not recorded"])
def test_a_run_made_by_hand_is_resumed_from_its_own_cells(tmp_path, monkeypatch, where):
    root = tmp_path / "runs"
    folder = run_folder("rank", MODEL)
    cfg = config_of("rank", MODEL, quick=True)
    shared = tmp_path / "store" if where == "elsewhere" else None
    run_sweep(cfg, root / folder, cells=shared, progress=False)  # `massmech ablation ... --out` by hand
    assert cells_of(root / folder).resolve() == (shared or root / folder / "cells").resolve()
    if where == "own, not recorded":  # a run made before manifests recorded their store
        manifest = json.loads((root / folder / MANIFEST).read_text())
        del manifest[CELLS_KEY]
        (root / folder / MANIFEST).write_text(json.dumps(manifest))
    monkeypatch.setattr(sweeps, "score", lambda *a, **k: pytest.fail("recomputed a cell the run holds"))
    seconds, _, _ = run_all(root, quick=True, models=(MODEL,), only=("rank",), progress=False)
    assert list(seconds) == [folder] and not (root / "cells").exists()


def test_a_run_of_files_massmech_does_not_ship_is_skipped_and_the_ledger_says_how_to_get_them(tmp_path, monkeypatch,
                                                                                               capsys):
    """The saved-tensor run (the paper's own tensors, not redistributed): without its files reproduce
    skips it, says so, and the ledger's rows read "needs files" (not "not run", which fails reproduce)."""
    from massmech.report.ledger import ledger

    monkeypatch.chdir(tmp_path)  # no data/paper-tensors here
    seconds, _, _ = run_all(tmp_path / "runs", quick=True, models=(MODEL,), only=("saved",), progress=False)
    assert seconds == {} and "skipped: it reads the paper's saved tensors" in capsys.readouterr().err
    rows = ledger(tmp_path / "runs", (MODEL,))
    o13 = rows[rows.key == "O13"]
    assert set(o13.model) == {"llama2-7b-chat", "llama3-8b-instruct"} and set(o13.verdict) == {"needs files"}
    assert o13.measured.str.contains("analyses/paper_tensors.py --from CLONE").all()


def test_the_paper_tensors_are_copied_only_with_their_pinned_bytes(tmp_path, monkeypatch):
    """analyses/paper_tensors.py: every file checked before any is written; a right file already there
    is kept, a different one is refused, never overwritten."""
    import hashlib
    import importlib.util
    import sys
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("paper_tensors", Path(__file__).parents[2] / "analyses" / "paper_tensors.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    clone = tmp_path / "clone"
    for folder, site in mod.SHA256:
        f = clone / "saved_attn_scores" / "meta-llama" / folder / f"{site}_merged_attn_weights_layer10.pt"
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(f"{folder} {site}".encode())
    pins = {key: hashlib.sha256(f"{key[0]} {key[1]}".encode()).hexdigest() for key in mod.SHA256}
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setattr(sys, "argv", ["paper_tensors.py", "--from", str(clone)])
    with pytest.raises(SystemExit, match="sha256"):  # the real pins: these bytes are not the paper's
        mod.main()
    assert not (work / "data").exists()  # nothing written before every file checked
    monkeypatch.setattr(mod, "SHA256", pins)
    mod.main()
    target = work / "data" / "paper-tensors" / "Llama-2-7b-chat-hf" / "q_merged_attn_weights_layer10.pt"
    assert target.read_bytes() == b"Llama-2-7b-chat-hf q"
    mod.main()  # again: kept
    target.write_bytes(b"someone else's file")
    with pytest.raises(SystemExit, match="not overwritten"):
        mod.main()
    assert target.read_bytes() == b"someone else's file"


def test_a_run_folder_of_another_config_is_refused_unless_overwrite(tmp_path):
    """After the ledger's runs change, reproduce refuses the old folder (never replaces it silently);
    --overwrite replaces it, and its cells are not recomputed."""
    from massmech.errors import MassmechError
    from massmech.studies.analyze import run_analyze

    root = tmp_path / "runs"
    folder = run_folder("analyze", MODEL)
    cfg = config_of("analyze", MODEL, quick=True)
    other = dataclasses.replace(cfg, lam=4.0)  # another config in the run's folder
    run_analyze(other, root / folder, progress=False)
    with pytest.raises(MassmechError, match="another config"):
        run_all(root, quick=True, models=(MODEL,), only=("analyze",), progress=False)
    seconds, _, _ = run_all(root, quick=True, models=(MODEL,), only=("analyze",), progress=False, overwrite=True)
    assert list(seconds) == [folder]
    assert json.loads((root / folder / MANIFEST).read_text())["config"]["lam"] == cfg.lam == 5.0


def test_a_shown_command_quotes_its_values_so_it_runs_as_printed():
    import shlex

    from massmech.report.runs import command

    cmd = command("saved", "llama2-7b-chat")
    args = shlex.split(cmd)
    source = args[args.index("--train-context-source") + 1]
    assert source.startswith("Touvron et al. 2023") and "Table 1" in source  # one argument, spaces and all
    assert args[:3] == ["massmech", "analyze", "--preset"] and "--model" in args and args[args.index("--model") + 1] == "activations"


def test_one_executor_session_serves_every_run(tmp_path, monkeypatch):
    """An executor with a session (Ray's) is made once and entered once around all the runs, so its
    workers and their models carry from run to run; each run's cells are still computed by it."""
    import massmech.infra.executors as executors
    from massmech.infra.executors import SerialExecutor

    class Session(SerialExecutor):
        made, entered, runs = 0, 0, 0

        def __init__(self):
            Session.made += 1

        def __enter__(self):
            Session.entered += 1
            return self

        def __exit__(self, *exc):
            pass

        def run(self, *args, **kwargs):
            Session.runs += 1
            return super().run(*args, **kwargs)

    real = executors.resolve_executor
    monkeypatch.setattr(executors, "resolve_executor", lambda e=None, **o: Session() if e == "ray" else real(e, **o))
    seconds, forward, _ = run_all(tmp_path / "runs", quick=True, models=(MODEL,), only=("shift", "rank"),
                                  progress=False, executor="ray")
    assert len(seconds) == 2 and set(forward.values()) == {None}
    assert Session.made == 1 and Session.entered >= 1 and Session.runs >= 2


@pytest.mark.parametrize("model", ["smollm2-135m", "gemma3-270m"])
def test_the_qk_parts_run_shares_its_round_to_nearest_cells_and_asks_only_for_layers_the_model_has(model):
    parts, draws = config_of("quant-parts", model), config_of("quant-draws", model)
    assert parts.key_dict() == draws.key_dict()  # the cells of the three whole-model variants are computed once
    assert {v.sites for v in parts.variants} == {"qk", "q", "k"}
    local = {"smollm2-135m": set(), "gemma3-270m": {"local", "global"}}[model]  # SmolLM2: every layer is global
    assert {v.layers for v in parts.variants} == {"all"} | local
