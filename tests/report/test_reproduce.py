"""reproduce resumes every run from the cells it already has, wherever the run keeps them."""

from __future__ import annotations

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
