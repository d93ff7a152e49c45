"""One registry of studies: everything built on a study derives from its spec, and a new study is one folder."""

from __future__ import annotations

import dataclasses
import json
import textwrap

import pandas as pd
import pytest

from massmech.cli import build_parser, main
from massmech.errors import ConfigError
from massmech.infra.study import Study
from massmech.report.runs import RUNS
from massmech.studies import registry
from massmech.studies.registry import StudySpec, cell_versions, get_study, register_study, studies


def _subcommands() -> dict[str, object]:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return dict(sub.choices)


def test_the_cli_has_one_command_per_study_and_alias():
    commands = _subcommands()
    for spec in studies().values():
        for name in spec.kinds:
            assert name in commands, f"study {spec.name}: no `massmech {name}`"
        presets = next(a for a in commands[spec.name]._actions if "--preset" in a.option_strings)
        assert list(presets.choices) == list(spec.presets) and presets.default == spec.default_preset


def test_each_study_object_carries_its_spec_name_and_version():
    for name, spec in studies().items():
        study = spec.load()
        assert isinstance(study, Study), name
        assert (study.name, study.version) == (name, spec.version)
    assert cell_versions() == {n: s.version for n, s in studies().items()}


def test_every_preset_builds_a_config_of_its_class_and_a_quick_one():
    for name, spec in studies().items():
        cls = spec.config_class()
        for preset in spec.presets:
            cfg = spec.preset(preset)
            assert isinstance(cfg, cls), (name, preset)
            assert isinstance(spec.quick_config(cfg), cls), (name, preset)


def test_the_ledger_runs_name_registered_studies_and_presets():
    for key, run in RUNS.items():
        spec = get_study(run.study)
        for preset in {run.preset, *run.presets.values()}:
            assert preset in spec.presets, f"ledger run {key}: {run.study} has no preset {preset!r}"


def test_unknown_names_are_refused_with_the_choices():
    with pytest.raises(ConfigError, match="studies are .*ablation"):
        get_study("nope")
    with pytest.raises(ConfigError, match="presets are"):
        get_study("ablation").preset("nope")
    with pytest.raises(ConfigError, match="no field"):
        get_study("ablation").preset("main", colour="red")
    spec = studies()["ablation"]
    with pytest.raises(ConfigError, match="belong to 'ablation'"):
        register_study(dataclasses.replace(spec, name="other", aliases=("sweep",)))


# A study a user adds: one folder (here a module written to a temporary folder on sys.path).
EXAMPLE = '''
"""Word counts: a study with no model, in one module."""
import dataclasses
from pathlib import Path

import pandas as pd

from massmech.infra.cells import cell_key
from massmech.infra.study import CellSpec, run_study
from massmech.studies.registry import StudySpec, register_study


@dataclasses.dataclass(frozen=True)
class WordsConfig:
    """Attributes:
        texts: The texts to count.
        lower: Lower-case first.
    """

    texts: tuple = ("a b a", "c")
    lower: bool = True


CALLS = []


class Words:
    name, version = "words", 1

    def plan(self, config, ctx):
        parts = [{"text": t, "lower": config.lower} for t in config.texts]
        return [CellSpec(key=cell_key(self.name, p, version=self.version), parts=p, group="-", unit=p["text"])
                for p in parts]

    def run_unit(self, config, cells, ctx):
        CALLS.extend(c.parts["text"] for c in cells)
        return {c.key: ({"words": len(c.parts["text"].split())}, {}) for c in cells}

    def consolidate(self, config, cells):
        return pd.DataFrame([{**c.meta["parts"], **c.data} for c in cells.values()])

    def finish(self, config, table, out, ctx):
        return {"total": int(table.words.sum())}


WORDS = Words()


def build(preset, **overrides):
    base = {"short": WordsConfig(), "long": WordsConfig(texts=("a b c d", "e f"))}[preset]
    return dataclasses.replace(base, **overrides)


def quick(config):
    return dataclasses.replace(config, texts=config.texts[:1])


def run(config, out, *, executor=None, cells=None, load_options=None, overwrite=False, progress=True):
    return run_study(WORDS, config, out, executor=executor, cells=cells, progress=progress, overwrite=overwrite)


SPEC = StudySpec(name="words", version=1, help="count words", study=f"{__name__}:WORDS",
                 config=f"{__name__}:WordsConfig", presets={"short": "two texts", "long": "longer texts"},
                 build=f"{__name__}:build", run=f"{__name__}:run", quick=f"{__name__}:quick")
'''


@pytest.fixture
def words(tmp_path, monkeypatch):
    (tmp_path / "words_study.py").write_text(textwrap.dedent(EXAMPLE))
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib

    module = importlib.import_module("words_study")
    monkeypatch.setitem(registry._STUDIES, "words", module.SPEC)  # register_study, undone after the test
    yield module
    import sys

    sys.modules.pop("words_study", None)


def test_a_new_study_in_one_folder_gets_the_cli_presets_cells_and_resume(words, tmp_path, capsys):
    assert get_study("words") is words.SPEC and cell_versions()["words"] == 1
    assert get_study("words").preset("long").texts == ("a b c d", "e f")
    out = tmp_path / "run"
    assert main(["words", "--preset", "short", "--no-lower", "--out", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["total"] == 4 and words.CALLS == ["a b a", "c"]
    table = pd.read_parquet(out / "results.parquet")
    assert list(table.words) == [3, 1] and not table.lower.any()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["run_kind"] == "words" and manifest["cell_version"] == {"words": 1}
    # resumed from its cells: nothing recomputed; another config in the same folder is refused
    assert main(["words", "--preset", "short", "--no-lower", "--out", str(out), "--json"]) == 0
    assert words.CALLS == ["a b a", "c"]
    capsys.readouterr()
    assert main(["words", "--preset", "long", "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_a_study_spec_checks_itself():
    with pytest.raises(ConfigError, match="no preset"):
        StudySpec(name="x", version=1, help="", study="m:S", config="m:C", presets={}, build="m:b", run="m:r", quick="m:q")
    with pytest.raises(ConfigError, match="model_field"):
        StudySpec(name="x", version=1, help="", study="m:S", config="m:C", presets={"p": ""}, build="m:b",
                  run="m:r", quick="m:q", model_field="checkpoint")


def test_cli_choices_are_the_vocabulary_the_code_uses():
    """Flags list their choices from the same source as the code (issue 25): the analyze config's
    axes equal what from_activations reads; the ablation config's those of Disruption (controls: and a sweep's kl)."""
    from dataclasses import fields

    from massmech.causal import vocabulary
    from massmech.core.activations import AXES
    from massmech.studies.ablation.config import SweepConfig
    from massmech.studies.analyze.config import AXES as CONFIG_AXES

    assert set(CONFIG_AXES) == set(AXES)
    choices = {f.name: f.metadata.get("choices") for f in fields(SweepConfig)}
    assert choices["replace"] == vocabulary.REPLACEMENTS and choices["kv_cache"] == vocabulary.KV_CACHE
    assert choices["selection"] == vocabulary.SELECTIONS and choices["controls"] == vocabulary.SWEEP_CONTROLS == (*vocabulary.CONTROLS[1:], "kl")
