"""Result pages, the claim ledger and the docs are generated from run folders (never pasted)."""

from __future__ import annotations

import pytest

from massmech.cli import main
from massmech.errors import RunDirError
from massmech.report.ledger import CLAIMS, ledger
from massmech.report.ledger_page import ledger_markdown
from massmech.report.pages import GENERATED, render_run, write_page
from massmech.report.runs import run_folder
from massmech.studies.ablation import SweepConfig, run_sweep
from massmech.studies.analyze import AnalyzeConfig, run_analyze

VERDICTS = {"reproduces", "partly", "contradicted", "not evaluable", "not run", "not testable offline", "needs files"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    run_sweep(SweepConfig(models=("tiny-llama",), tasks=("kv_lookup", "country_capital"), n=6, rules=("topk",),
                          ks=(2,)), root / run_folder("main", "tiny-llama"), progress=False)
    run_analyze(AnalyzeConfig(model="tiny-llama", n_tokens=256, seq_len=64, heatmap_layers=()),
                root / run_folder("analyze", "tiny-llama"), progress=False)
    return root


def test_a_run_page_carries_its_provenance_table_and_figures(runs):
    page = render_run(runs / run_folder("analyze", "tiny-llama"))
    assert page.startswith(GENERATED) and "model tiny-llama" in page and "| q.pre |" in page
    assert "![" in page  # the analyze figures
    sweep = render_run(runs / run_folder("main", "tiny-llama"))
    assert "| tiny-llama | kv_lookup (not evaluable) | qk.pre.top2 |" in sweep and "git `" in sweep  # a random model


def test_the_ledger_judges_every_claim_from_the_runs(runs):
    t = ledger(runs, models=("tiny-llama",))
    assert set(t.verdict) <= VERDICTS and {c.key for c in CLAIMS} <= set(t.key)
    judged = t[t.verdict != "not run"]
    assert {"P1", "P2", "P3", "P4", "P5", "P6", "O1"} <= set(judged.key)  # the runs that exist were read
    assert (t[t.key == "P7"].verdict == "not run").all()  # no quant run here
    assert (t[t.key == "P8"].verdict == "not run").all() and "massmech twins" in t[t.key == "P8"].measured.iloc[0]
    text = ledger_markdown(runs, models=("tiny-llama",))
    assert text.startswith(GENERATED) and text.count("| P1 |") == 1


def test_report_command_and_pages_never_overwrite_foreign_files(runs, tmp_path, capsys):
    assert main(["report", str(runs / run_folder("main", "tiny-llama")), "--markdown"]) == 0
    assert "kv_lookup" in capsys.readouterr().out
    foreign = tmp_path / "notes.md"
    foreign.write_text("my own notes")
    with pytest.raises(RunDirError, match="not generated"):
        write_page(foreign, GENERATED + "\nx")
    assert foreign.read_text() == "my own notes"
    assert main(["report", "--ledger", str(runs), "--out", str(tmp_path / "ledger.md")]) == 0
    assert main(["report", "--ledger", str(runs), "--out", str(tmp_path / "ledger.md")]) == 0  # its own page: replaced
    assert main(["report", str(tmp_path)]) != 0  # not a run folder: a clear error


def test_docs_and_readme_block_are_regenerated(runs, tmp_path):
    from massmech.report.docs import README_END, README_START, write_docs

    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n{README_START}\nSTALE-LINE\n{README_END}\nrest\n")
    written = write_docs(runs, tmp_path / "docs", figures_dir=tmp_path / "none", models=("tiny-llama",))
    names = {p.name for p in written}
    assert {"ledger.md", "index.md", "gallery.md", "README.md"} <= names
    text = readme.read_text()
    assert "STALE-LINE" not in text and "| claim |" in text and text.endswith("rest\n")


def test_p7_and_o3_each_judge_their_own_variants_with_their_own_holm(tmp_path):
    import pandas as pd

    from massmech.report.rules import qk_arm, quant_protect

    rows = [("none", "none", False, None, None, None)]
    rows += [("rtn-w4-g64", "rtn", False, 0, 9, 0.004), ("awq-w4-g64", "awq", True, 0, 1, 1.0),
             ("qk-rtn-keep-massive-w4-pc", "qk-rtn-keep-massive", True, 0, 0, 1.0),
             ("qk-rtn-keep-random-w4-pc", "qk-rtn-keep-random", False, 0, 7, 0.016)]
    t = pd.DataFrame([dict(model="m", variant=v, method=m, outlier_aware=o, measure="accuracy", task="passkey",
                           kind="contextual", n=40, b=b, c=c, p_value=p, evaluable=True, p_holm=1.0)
                      for v, m, o, b, c, p in rows])
    t.to_parquet(tmp_path / "results.parquet")
    text, verdict = quant_protect(tmp_path, "m")  # the stored whole-table p_holm (1.0) is not what decides
    assert verdict == "reproduces" and "1 of 2" in text and "rtn-w4-g64/passkey" in text and "qk-" not in text
    text, verdict = qk_arm(tmp_path, "m")  # 0.016 × 2 comparisons < 0.05: only the random-rows-kept arm hurts
    assert verdict == "reproduces" and "1 of 2" in text and "qk-rtn-keep-random-w4-pc/passkey" in text


def test_ablate_and_compare_pages_show_their_tables_and_models(runs, tmp_path, capsys):
    """Issue 25: an ablate run's page has its conditions table (it printed only a header), a compare
    run's page names its models and seed as '-' (it showed 'model - · seed None'), and --out onto a
    folder or an unwritable path is a clear error, not a traceback."""
    from massmech.causal.disruption import Disruption
    from massmech.studies.ablation.single import ablate
    from massmech.studies.compare import compare

    ablate("tiny-llama", "kv_lookup", n=4, disruption=Disruption(rule="topk", k=2), out=tmp_path / "abl")
    page = render_run(tmp_path / "abl")
    assert "| condition | accuracy |" in page and "| massive |" in page and "Massive vs control" in page
    analyze = runs / run_folder("analyze", "tiny-llama")
    compare(analyze, analyze, labels=["a", "b"], out=tmp_path / "cmp")
    page = render_run(tmp_path / "cmp")
    assert "model tiny-llama, tiny-llama · seed - ·" in page and "| a | q | pre |" in page
    (tmp_path / "folder").mkdir()
    assert main(["report", str(tmp_path / "abl"), "--out", str(tmp_path / "folder")]) == 2
    assert "is a folder" in capsys.readouterr().err
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["report", str(tmp_path / "abl"), "--out", str(blocker / "page.md")]) == 2
    assert "cannot write the page" in capsys.readouterr().err
