"""The band-attribution study: its run folder, resuming from cells, its heat maps, and its gallery figures."""

import json

import pandas as pd
import pytest

from massmech.causal.retrieval import summarize_edges
from massmech.errors import ConfigError, RopeError
from massmech.report.figures import FIGURES, MissingRun
from massmech.report.runs import run_folder
from massmech.studies.attribute.config import AttributeConfig, quick
from massmech.studies.attribute.study import BANDS, run_attribute

CFG = AttributeConfig(model="tiny-llama", tasks=("passkey", "kv_lookup"), n=2)


def test_a_run_writes_its_tables_figures_and_summary_and_resumes_from_cells(tmp_path, tiny_models):
    model = tiny_models["tiny-llama"]
    table = run_attribute(CFG, tmp_path / "run", model=model, progress=False)
    assert set(table.task) == {"passkey", "kv_lookup"} and set(table.layer) == set(range(model.info.n_layers))
    bands = pd.read_parquet(tmp_path / "run" / BANDS)
    for task, g in table.groupby("task"):  # the pooled table is summarize_edges of each task's rows
        want = summarize_edges(g.drop(columns=["task", "model"]))
        got = bands[bands.task == task].drop(columns="task").reset_index(drop=True)
        pd.testing.assert_frame_equal(got, want)
        assert (tmp_path / "run" / "figures" / f"attribution_{task}.pdf").is_file()
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    needle = summary["advantage"]["passkey"]["needle"]
    bands_sum = sum(v for g, v in needle["groups"].items() if g.startswith("band="))
    assert bands_sum == pytest.approx(needle["total"], abs=1e-3)  # the bands split the whole advantage
    cells = sorted(p.name for p in (tmp_path / "run" / "cells" / "attribute").iterdir())
    again = run_attribute(CFG, tmp_path / "run", model=model, progress=False)
    pd.testing.assert_frame_equal(again, table)
    assert sorted(p.name for p in (tmp_path / "run" / "cells" / "attribute").iterdir()) == cells


def test_the_gallery_draws_each_task_from_the_ledger_run(tmp_path, tiny_models):
    root = tmp_path / "runs"
    folder = root / run_folder("attribute", "tiny-llama")
    run_attribute(AttributeConfig(model="tiny-llama", tasks=("passkey",), n=2), folder,
                  model=tiny_models["tiny-llama"], progress=False)
    FIGURES["attribution_passkey"].draw(root, "tiny-llama", tmp_path / "fig")
    assert (tmp_path / "fig.png").is_file()
    with pytest.raises(MissingRun, match="no kv_lookup rows"):
        FIGURES["attribution_kv_lookup"].draw(root, "tiny-llama", tmp_path / "fig2")
    with pytest.raises(MissingRun, match="massmech attribute --preset ledger"):
        FIGURES["attribution_passkey"].draw(tmp_path / "empty", "tiny-llama", tmp_path / "fig3")


def test_bad_configs_are_refused_and_quick_is_smaller(tiny_models, tmp_path):
    with pytest.raises(ConfigError, match="n >= 1"):
        AttributeConfig(n=0)
    with pytest.raises(RopeError, match="no rotary"):
        run_attribute(AttributeConfig(model="tiny-gpt2", n=1), tmp_path / "gpt2", model=tiny_models["tiny-gpt2"],
                      progress=False)
    assert not (tmp_path / "gpt2").exists()
    assert quick(AttributeConfig(n=50)).n == 4
