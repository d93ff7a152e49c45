"""Notebook habits: short reprs, FrequencyAnalysis save/load/from_run, and compare()."""

import doctest

import pandas as pd
import pytest

import massmech as mm
from massmech import plotting
from massmech._notebook import distinct, span
from massmech.core.frequency import FrequencyAnalysis
from massmech.errors import RunDirError
from massmech.studies.compare import FIGURES, SUMMARY_COLUMNS

TEXTS = ["The quick brown fox jumps over the lazy dog.", "Massive values sit in slow RoPE pairs."]


def _analysis(model) -> FrequencyAnalysis:
    return mm.frequency_analysis(mm.capture_stats(model, TEXTS, progress=False), context_len=64)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from massmech.studies.analyze import AnalyzeConfig, run_analyze

    out = tmp_path_factory.mktemp("runs") / "tiny-llama-run"
    cfg = AnalyzeConfig(model="tiny-llama", n_tokens=256, seq_len=64, batch_size=2, bars_layer=0)
    run_analyze(cfg, out, progress=False)
    return out


def _frames_equal(a: FrequencyAnalysis, b: FrequencyAnalysis) -> None:
    for name in ("pairs", "layers", "massive"):
        pd.testing.assert_frame_equal(getattr(a, name), getattr(b, name))
    assert a.summary == b.summary and a.params == b.params


def test_span_and_distinct():
    assert span(range(30)) == "0..29 (30)"
    assert span([0, 2, 5]) == "[0, 2, 5]"
    assert span(list(range(0, 40, 2))) == "[0, 2, 4, ..., 36, 38] (20)"
    assert distinct([1e4, 1e6, 10000.0000001]) == "[1e+04, 1e+06]"
    assert distinct([float("nan"), 2.0, float("nan")]) == "[2, nan]"


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gemma3"])
def test_reprs_are_one_short_line(tiny_models, name):
    model = tiny_models[name]
    stats = mm.capture_stats(model, TEXTS, progress=False)
    objects = [stats, model.rope, mm.verify_rope(model), mm.frequency_analysis(stats, context_len=64)]
    for obj in objects:
        text = repr(obj)
        assert text.startswith(type(obj).__name__ + "(") and "\n" not in text and len(text) < 200, text
        assert "<table" in obj._repr_html_()
    n = model.info.n_layers
    assert f"layers=0..{n - 1} ({n})" in repr(stats) and "tokens=" in repr(stats)
    rope = repr(model.rope)
    assert ("bases=[1e+04, 1e+06]" in rope) if name == "tiny-gemma3" else ("base=" in rope)
    assert "scaling" not in rope
    assert "failures=0" in repr(objects[2])


def test_save_load_round_trip(tiny_models, tmp_path):
    fa = _analysis(tiny_models["tiny-llama"])
    folder = fa.save(tmp_path / "fa")
    assert sorted(p.name for p in folder.iterdir()) == [
        "frequency.json", "layers.parquet", "manifest.json", "massive.parquet", "pairs.parquet",
    ]
    _frames_equal(FrequencyAnalysis.load(folder), fa)
    with pytest.raises(RunDirError, match="overwrite=True"):
        fa.save(folder)
    fa.save(folder, overwrite=True)
    _frames_equal(FrequencyAnalysis.load(folder), fa)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fa"]  # no temp folders left


def test_save_refuses_a_user_folder(tiny_models, tmp_path):
    fa = _analysis(tiny_models["tiny-llama"])
    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.txt").write_text("keep me")
    for overwrite in (False, True):
        with pytest.raises(RunDirError, match="not a massmech run folder"):
            fa.save(user, overwrite=overwrite)
    assert (user / "notes.txt").read_text() == "keep me"
    saved = fa.save(tmp_path / "fa")
    (saved / "notes.txt").write_text("mine too")  # a user file inside a previous save
    with pytest.raises(RunDirError, match="notes.txt"):
        fa.save(saved, overwrite=True)
    assert (saved / "notes.txt").read_text() == "mine too"
    with pytest.raises(FileNotFoundError, match="frequency.json"):
        FrequencyAnalysis.load(user)


def test_from_run(run_dir):
    fa = FrequencyAnalysis.from_run(run_dir)
    pd.testing.assert_frame_equal(fa.pairs, pd.read_parquet(run_dir / "pairs.parquet"))
    assert fa.params["context_len"] == 64 and set(fa.summary) == {"q.pre", "q.post", "k.pre", "k.post", "v.pre"}
    with pytest.raises(FileNotFoundError, match="from_run"):
        FrequencyAnalysis.load(run_dir)


def test_compare_writes_folder(tiny_models, run_dir, tmp_path):
    qwen = _analysis(tiny_models["tiny-qwen2"])
    out = tmp_path / "cmp"
    cmp = mm.compare(run_dir, ("qwen2", qwen), out=out)
    try:
        assert list(cmp.analyses) == [run_dir.name, "qwen2"]
        t = cmp.table
        assert len(t) == 10 and set(t.run) == {run_dir.name, "qwen2"}
        for col in ("run", "site", "stage", "n_layers", "n_pairs", "context_len", *SUMMARY_COLUMNS):
            assert col in t.columns
        expected = {"compare.csv", "compare.parquet", "figures", "manifest.json"} | {
            f"figures/{f}.{ext}" for f in FIGURES for ext in ("pdf", "png")
        }
        assert {str(p.relative_to(out)) for p in out.rglob("*")} == expected
        pd.testing.assert_frame_equal(pd.read_parquet(out / "compare.parquet"), t)
        assert "\n" not in repr(cmp) and len(repr(cmp)) < 200 and "<table" in cmp._repr_html_()
        with pytest.raises(RunDirError, match="overwrite=True"):
            mm.compare(run_dir, ("qwen2", qwen), out=out)
        mm.compare(run_dir, ("qwen2", qwen), out=out, overwrite=True)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["cmp"]
    finally:
        plotting.close_all()


def test_compare_refuses_user_folder_and_duplicate_labels(tiny_models, tmp_path):
    llama, qwen = _analysis(tiny_models["tiny-llama"]), _analysis(tiny_models["tiny-qwen2"])
    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.txt").write_text("keep me")
    try:
        with pytest.raises(RunDirError, match="not a massmech run folder"):
            mm.compare(llama, qwen, out=user)
        assert [p.name for p in user.iterdir()] == ["notes.txt"]
        assert (user / "notes.txt").read_text() == "keep me"
        assert list(mm.compare(llama, qwen).analyses) == ["run0", "run1"]
        with pytest.raises(ValueError, match="duplicate"):
            mm.compare(("a", llama), ("a", qwen))
        with pytest.raises(ValueError, match="duplicate"):
            mm.compare(llama, qwen, labels=["x", "x"])
        with pytest.raises(ValueError, match="at least one"):
            mm.compare()
    finally:
        plotting.close_all()


@pytest.mark.parametrize(
    "obj",
    [
        mm.compare,
        FrequencyAnalysis.save,
        FrequencyAnalysis.load,
        FrequencyAnalysis.from_run,
        plotting.compare_spectrum,
        plotting.compare_emergence,
    ],
    ids=lambda o: o.__qualname__,
)
def test_docstring_examples_run(obj):
    finder = doctest.DocTestFinder(recurse=False)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    tests = finder.find(obj, obj.__qualname__, globs={})
    assert tests and tests[0].examples, f"{obj.__qualname__} has no example"
    for test in tests:
        runner.run(test)
    plotting.close_all()
    assert runner.tries and runner.failures == 0
