"""analyses/verdict_changes.py: the old page's verdicts against the ledger of a runs root."""

from __future__ import annotations

import importlib.util
import subprocess
from pathlib import Path

import pandas as pd

SCRIPT = Path(__file__).parents[2] / "analyses" / "verdict_changes.py"
PAGE = """# Claim ledger

| # | claim | model | measured | verdict | rule |
|---|---|---|---|---|---|
| P1 | concentrated | smollm2-135m | 100% | **reproduces** | r |
| P5 | wrecks | smollm2-135m | -0.3 | **partly** | r |
| O2 | paper | gemma3-270m | - | **partly** (v2) | r |
"""


def _script():
    spec = importlib.util.spec_from_file_location("verdict_changes", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _repo(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    (repo / "docs").mkdir(parents=True)
    (repo / "docs" / "ledger.md").write_text(PAGE)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(repo)]
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "page"], check=True)
    return repo


def test_old_verdicts_read_the_committed_page(tmp_path):
    old = _script().old_verdicts("HEAD", repo=_repo(tmp_path))
    assert old.values.tolist() == [["P1", "smollm2-135m", "reproduces", 1], ["P5", "smollm2-135m", "partly", 1],
                                   ["O2", "gemma3-270m", "partly", 2]]


def test_a_changed_verdict_is_flagged_only_under_the_same_version_and_when_run(tmp_path, monkeypatch):
    import massmech.report.ledger as ledger_mod

    new = pd.DataFrame([
        {"key": "P1", "model": "smollm2-135m", "version": 1, "verdict": "partly"},      # changed under v1
        {"key": "P1", "model": "smollm2-135m", "version": 2, "verdict": "reproduces"},
        {"key": "P5", "model": "smollm2-135m", "version": 1, "verdict": "not run"},     # not run: no change
        {"key": "O2", "model": "gemma3-270m", "version": 1, "verdict": "contradicted"},
        {"key": "O2", "model": "gemma3-270m", "version": 2, "verdict": "partly"},       # the page's v2: same
        {"key": "O9", "model": "gemma3-270m", "version": 1, "verdict": "reproduces"},   # new claim
    ])
    monkeypatch.setattr(ledger_mod, "ledger", lambda root, versions="newest": new)
    out = _script().changes("HEAD", tmp_path / "runs", repo=_repo(tmp_path)).set_index(["key", "model"])
    assert out["changed"].to_dict() == {("O2", "gemma3-270m"): False, ("O9", "gemma3-270m"): False,
                                        ("P1", "smollm2-135m"): True, ("P5", "smollm2-135m"): False}
    assert out.loc[("P1", "smollm2-135m"), "newest"] == "reproduces"
    assert out.loc[("P1", "smollm2-135m"), "new_same_version"] == "partly"
    assert pd.isna(out.loc[("O9", "gemma3-270m"), "old"])
