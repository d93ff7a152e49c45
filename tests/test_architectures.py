"""The architecture matrix (issue 15): every tiny family runs the pipeline; the docs table is current."""

from pathlib import Path

import pytest

from massmech.core.catalog import ARCH_MODELS, TINY_MODELS
from massmech.report.architectures import architecture_row, markdown

DOC = Path(__file__).resolve().parents[1] / "docs" / "architectures.md"
NO_POST_HOOK = {"tiny-phi3", "tiny-neox"}  # TransformerLens 4.3 fires no hook_rot_q/k for them


@pytest.fixture(scope="module")
def rows():
    return [architecture_row(name) for name in (*TINY_MODELS, *ARCH_MODELS)]


def test_every_architecture_runs_the_pipeline(rows):
    for row in rows:
        assert row["pipeline"] == "ok", row
        if row["model"] in NO_POST_HOOK:
            assert "post" not in row["stages"] and row["doctor"].startswith("ok; skipped rope_verified"), row
            assert "no post-RoPE hook" in row["doctor"] and row["doctor"].endswith("rope_matches_config"), row
        else:
            assert row["doctor"] == "ok", row
    rope = {r["model"]: r["rope"] for r in rows}
    assert rope["tiny-neox"] == "half, 8 of 16 dims" and rope["tiny-opt"] == rope["tiny-gpt2"] == "none"


def test_the_docs_table_is_generated(rows):
    text = DOC.read_text()
    assert "\n| model |" in text, "docs/architectures.md lost its table"
    assert text[text.index("\n| model |") + 1:].strip() == markdown(rows), (
        "docs/architectures.md is stale: regenerate the table with python -m massmech.report.architectures"
    )
