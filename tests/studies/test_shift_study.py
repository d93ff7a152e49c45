"""The position-shift study: its run folder, resuming from cells, its data, and the ledger's P9 judge."""

import json

import pandas as pd
import pytest

from massmech.errors import ConfigError
from massmech.report.rules import NoData
from massmech.report.rules_mechanism import position_shift
from massmech.studies.shift.config import ShiftConfig, quick
from massmech.studies.shift.study import CHANGES, SLOW, run_shift, shift_data

CFG = ShiftConfig(model="tiny-llama", n_texts=3, seq_len=12, shifts=(4, 8), batch_size=2)


def test_a_run_writes_its_tables_figure_and_summary_and_resumes_from_cells(tmp_path, tiny_models):
    model = tiny_models["tiny-llama"]
    table = run_shift(CFG, tmp_path / "run", model=model, progress=False)
    assert set(table["shift"]) == {4, 8} and set(table.example) == {0, 1, 2}
    assert len(table) == 2 * 3 * model.info.n_layers * 3 * 3  # shifts x texts x layers x measures x thirds
    slow = pd.read_parquet(tmp_path / "run" / SLOW)
    assert len(slow) == 2 * 3 * model.info.n_layers
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert set(summary["slow_least_share"]) == {f"{m}@{s}" for m in ("logit", "q", "k") for s in (4, 8)}
    assert (tmp_path / "run" / "figures" / "shift.pdf").is_file() and (tmp_path / "run" / "figures" / "shift.png").is_file()
    cells = sorted(p.name for p in (tmp_path / "run" / "cells" / "shift").iterdir())
    again = run_shift(CFG, tmp_path / "run", model=model, progress=False)
    pd.testing.assert_frame_equal(again, table)
    assert sorted(p.name for p in (tmp_path / "run" / "cells" / "shift").iterdir()) == cells
    assert position_shift(tmp_path / "run", "tiny-llama")[1] in ("reproduces", "partly", "contradicted")


def test_the_texts_lose_their_special_tokens_and_the_prefix_is_another_article(tiny_models):
    model = tiny_models["tiny-llama"]
    data = shift_data(model, CFG)
    assert data.lead == model.tokenize("")[0] and data.lead  # the byte tokenizer's BOS
    assert all(len(t) == CFG.seq_len and t[0] != data.lead[0] for t in data.texts)
    assert len(data.prefix) == max(CFG.shifts) and data.prefix not in [t[: len(data.prefix)] for t in data.texts]
    with pytest.raises(ConfigError, match="exceeds"):
        shift_data(model, ShiftConfig(model="tiny-llama", seq_len=model.info.n_ctx))


def test_bad_configs_are_refused_and_quick_is_smaller():
    with pytest.raises(ConfigError, match="distinct"):
        ShiftConfig(shifts=(4, 4))
    with pytest.raises(ConfigError, match="n_texts"):
        ShiftConfig(n_texts=1)
    assert quick(ShiftConfig()).n_texts == 4 and quick(ShiftConfig()).shifts == (16, 64)


def _write(path, least: dict[str, list[bool]]):
    rows = [dict(shift=s, measure=m, layer=i, low=0.1, least_other=0.2, slow_least=v)
            for m, by in least.items() for s, flags in zip((16, 256), by, strict=True) for i, v in enumerate(flags)]
    path.mkdir()
    pd.DataFrame(rows).to_parquet(path / SLOW)
    pd.DataFrame([dict(shift=256, layer=0, measure="logit", band=b, change=1.0, base=2.0, relative=r)
                  for b, r in (("high", 0.5), ("mid", 0.4), ("low", 0.1))]).to_parquet(path / CHANGES)


@pytest.mark.parametrize("flags,verdict", [
    ([[True, True, False], [True, True, True]], "reproduces"),
    ([[True, False, False], [True, True, True]], "partly"),
    ([[True, False, False], [False, False, False]], "contradicted"),
])
def test_the_p9_judge_applies_its_rule(tmp_path, flags, verdict):
    _write(tmp_path / "run", {"logit": [[bool(x) for x in f] for f in flags], "q": [[True] * 3] * 2})
    measured, got = position_shift(tmp_path / "run", "m")
    assert got == verdict
    assert "2/3 layers at shift 16" in measured or "1/3 layers at shift 16" in measured
    assert "low 0.100" in measured and "Q before RoPE" in measured
    with pytest.raises(NoData):
        position_shift(tmp_path / "nothing", "m")
