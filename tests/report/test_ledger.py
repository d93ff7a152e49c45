"""The ledger's rules are versioned, fixed in git before they are changed, and their new versions
answer issue 26's audit (each test below fails under the version-1 rule it replaces)."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from massmech.report import rules, rules_v2
from massmech.report.ledger import CLAIMS, Rule, ledger
from massmech.report.ledger_page import ledger_markdown
from massmech.report.runs import models_of

ROOT = Path(__file__).resolve().parents[2]


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout


def _joined(source: str) -> str:
    """Python source with adjacent string literals joined (a rule's text is wrapped over lines)."""
    return re.sub(r'"\s*\n\s*"', "", source)


def test_every_claim_numbers_its_versions_and_states_a_scope():
    for c in CLAIMS:
        assert [r.version for r in c.rules] == list(range(1, len(c.rules) + 1)), c.key
        assert all(r.scope and r.text for r in c.rules), c.key
        assert all(r.why for r in c.rules if r.version > 1), c.key  # a new version says what changed
        assert all(bool(r.fixed) == bool(r.commit) for r in c.rules), c.key


def _not_fixed_as_said(r: Rule) -> list[str]:
    """What is wrong with a committed version: its text not in its commit, or another date."""
    files = [f for f in ("src/massmech/report/ledger.py", "src/massmech/report/rules.py",
                                     "src/massmech/report/why.py")
             if f in _git("ls-tree", "-r", "--name-only", r.commit)]
    text = _joined("".join(_git("show", f"{r.commit}:{f}") for f in files))
    wrong = [] if r.text in text else [f"v{r.version}: its text is not in {r.commit}"]
    date = _git("show", "-s", "--format=%aI", r.commit).strip()
    return wrong + ([] if date == r.fixed else [f"v{r.version}: fixed {r.fixed}, but {r.commit} is of {date}"])


HISTORY = pytest.mark.skipif(shutil.which("git") is None or not (ROOT / ".git").exists(), reason="needs git history")


@HISTORY
def test_a_committed_rule_was_fixed_in_its_commit_at_its_time():
    """The commit of each version holds the rule's text as it reads now, at the date the ledger gives."""
    committed = [(c.key, r) for c in CLAIMS for r in c.rules if r.commit]
    assert len(committed) >= len(CLAIMS)
    assert [(key, why) for key, r in committed for why in _not_fixed_as_said(r)] == []


@HISTORY
def test_the_rule_check_can_fail():
    """An edited text, or another date, is caught."""
    r = CLAIMS[0].rules[0]
    assert _not_fixed_as_said(dataclasses.replace(r, text=r.text + " (edited)"))
    assert _not_fixed_as_said(dataclasses.replace(r, fixed="2026-12-31T00:00:00+00:00"))


def test_timing_says_whether_a_run_came_after_its_rule():
    r = Rule(1, "t", rules.qk_not_v, "s", fixed="2026-11-30T06:30:43+00:00", commit="74d10f0")
    assert r.timing("2026-11-30T06:30:44+00:00") == "run after rule"
    assert r.timing("2026-11-30T06:30:42+00:00") == "rule after run"
    assert Rule(2, "t", rules.qk_not_v, "s").timing("2030-01-01T00:00:00+00:00") == "rule not committed"


def test_a_run_rebuilt_after_its_rule_keeps_the_time_its_numbers_were_made(tmp_path):
    """A rebuild from stored cells writes a new manifest, not new numbers: O6's runs were rebuilt after
    its version-2 rule and were then called 'run after rule', though the rule was fixed knowing them."""
    r = Rule(1, "t", rules.qk_not_v, "s", fixed="2026-12-05T16:48:00+00:00", commit="1426335")
    rebuilt = {"created": "2026-12-06T12:19:06+00:00", "cells_created": {"first": "2026-12-05T12:00:00+00:00"}}
    assert r.timing(rules.made_at(rebuilt)) == "rule after run"
    assert r.timing(rules.made_at({"created": rebuilt["created"]})) == "run after rule"  # no cells: its own time
    seen = dataclasses.replace(r, seen=("smollm2-135m",))  # its run existed, its cells were not kept
    assert seen.timing("2026-12-06T12:19:06+00:00", "smollm2-135m") == "rule after run"
    assert seen.timing("2026-12-06T12:19:06+00:00", "gemma3-270m") == "run after rule"
    o6 = next(c for c in CLAIMS if c.key == "O6")
    assert all(v.timing("2030-01-01T00:00:00+00:00", m) == "rule after run" for v in o6.rules for m in models_of(o6.run))


def test_every_seen_model_is_a_model_of_its_claims_run():
    """``seen`` names models as strings: a misspelt one would never match and say nothing."""
    for c in CLAIMS:
        for r in c.rules:
            assert set(r.seen) <= set(models_of(c.run)), (c.key, r.version, r.seen)


def _analyze(path: Path, q: int, k: int, v: int, massive: list[tuple[str, int]], n_layers: int = 16,
             robust: tuple[int, int] = (0, 0)) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    by = {f"{s}.pre": {"massive_count": c} for s, c in (("q", q), ("k", k), ("v", v))}
    (path / "summary.json").write_text(json.dumps({
        "by_stage": by, "n_layers": n_layers,
        "emergence": {s: {"layer": layer, "by_factor": {"1": layer}, "minus_v": 0.5, "minus_v_low": 0.4,
                          "minus_v_high": 0.6} for s, layer in zip("qk", robust, strict=True)}}))
    pd.DataFrame([{"site": s, "stage": "pre", "layer": layer} for s, layer in massive]).to_parquet(
        path / "massive.parquet")
    return path


def test_p3_v2_reads_absent_in_v_as_below_ten_percent(tmp_path):
    p = _analyze(tmp_path, 272, 70, 2, [("q", 3), ("k", 0), ("v", 0), ("v", 0)])
    assert rules.qk_not_v(p, "m")[1] == "partly"
    text, verdict = rules_v2.qk_not_v_v2(p, "m")
    assert verdict == "reproduces" and "V = 2.9%" in text and "layer 0" in text
    assert rules_v2.qk_not_v_v2(_analyze(tmp_path / "b", 10, 10, 3, [("v", 1)]), "m")[1] == "contradicted"


def test_p4_v2_reads_the_first_layer_and_shows_the_robust_one(tmp_path):
    # Gemma-3's shape: Q first appears at layer 1 but concentrates at 14 of 18
    p = _analyze(tmp_path, 5, 5, 0, [("q", 1), ("q", 14), ("k", 0)], n_layers=18, robust=(14, 0))
    assert rules_v2.early_v2(p, "m")[1] == "partly"  # appears early, concentrates late
    p = _analyze(tmp_path / "b", 5, 5, 0, [("q", 1), ("k", 0)], n_layers=18, robust=(2, 0))
    text, verdict = rules_v2.early_v2(p, "m")
    assert verdict == "reproduces" and "first layer with a λ-massive dim (λ = 5, pre-RoPE): Q 1, K 0 of 18" in text
    p = _analyze(tmp_path / "c", 5, 5, 0, [("q", 9), ("k", 12)], n_layers=18, robust=(0, 0))
    assert rules_v2.early_v2(p, "m")[1] == "contradicted"  # a robust layer early is not where they appear


def _sweep(path: Path, rows: list[dict]) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    base = dict(model="m", kind="contextual", role="massive", evaluable=True, condition="qk.post.top22.zero", n=100)
    pd.DataFrame([{**base, **r} for r in rows]).to_parquet(path / "results.parquet")
    return path


def _row(task: str, acc: float, b: int, c: int, p: float, bm: int, cm: int, pm: float) -> dict:
    return dict(task=task, accuracy=acc, delta=(b - c) / 100, b=b, c=c, p_value=p, p_holm=p,
                b_vs_matched=bm, c_vs_matched=cm, p_vs_matched=pm, p_vs_matched_holm=pm)


def test_p5_v2_a_control_at_floor_is_not_evaluable(tmp_path):
    """O2 on Gemma-3: massive and control both at 0.00, 0 discordant."""
    p = _sweep(tmp_path, [_row("passkey", 0.0, 0, 80, 1e-24, 0, 0, 1.0), _row("kv", 0.0, 0, 25, 6e-8, 0, 0, 1.0)])
    assert rules.contextual(p, "m")[1] == "partly"  # version 1 reads "no difference" as a result
    text, verdict = rules_v2.contextual_v2(p, "m")
    assert verdict == "not evaluable" and "undecidable" in text and "0 of 0" in text and "MDE" in text


def test_p5_v2_counts_a_decidable_control(tmp_path):
    p = _sweep(tmp_path, [_row("passkey", 0.2, 0, 60, 1e-18, 0, 30, 1e-9), _row("kv", 0.1, 0, 20, 1e-6, 5, 30, 1e-5)])
    text, verdict = rules_v2.contextual_v2(p, "m")
    assert verdict == "reproduces" and "2 of 2 with a decidable control comparison" in text
    # control successes follow from the massive arm's counts: 20 - 0 + 30 = 50 and 10 - 5 + 30 = 35
    assert "control 50/100 right" in text and "control 35/100 right" in text


def test_p5_v2_shows_how_much_variance_the_matched_control_removed(tmp_path):
    """Gemma-3 at k = 22 with zero: even every other dim cannot remove as much as the massive ones."""
    rows = [{**_row("passkey", 0.2, 0, 60, 1e-18, 0, 30, 1e-9), "control": None, "removed_variance": 2.2},
            {"task": "passkey", "role": "control", "control": "matched", "removed_variance": 0.77,
             "condition": "qk.post.top22.zero.ctrl-matched-s0", "evaluable": True},
            {"task": "passkey", "role": "control", "control": "lowest", "removed_variance": 0.01,
             "condition": "qk.post.top22.zero.ctrl-lowest", "evaluable": True}]
    text, _ = rules_v2.contextual_v2(_sweep(tmp_path, rows), "m")
    assert "control 50/100 right" in text and "its removed variance 0.35x the massive's" in text


def test_o9_judges_against_the_kl_matched_control_not_the_size_matched_one(tmp_path):
    """The same massive rows: below the variance-matched control, level with the KL-matched one (they drop
    vs baseline, so P5 version 2 reads partly)."""
    kl = dict(kl_massive=0.64, kl_control=0.61, kl_scale=2.0, kl_matched=True, removed_energy_massive=0.0086,
              removed_energy_control=0.018, neutral_variance_massive=0.041, neutral_variance_control=0.086)
    rows = [{**_row("passkey", 0.2, 0, 60, 1e-18, 0, 30, 1e-9), **kl, "b_vs_kl": 10, "c_vs_kl": 12, "p_vs_kl": 0.8,
             "p_vs_kl_holm": 0.8},
            {**_row("kv", 0.1, 0, 20, 1e-6, 5, 30, 1e-5), **kl, "b_vs_kl": 9, "c_vs_kl": 7, "p_vs_kl": 0.8,
             "p_vs_kl_holm": 0.8}]
    p = _sweep(tmp_path, rows)
    assert rules_v2.contextual_v2(p, "m")[1] == "reproduces"  # against the size-matched control
    text, verdict = rules_v2.contextual_kl(p, "m")
    assert verdict == "partly" and "0 of 2 with a decidable control comparison below the KL-matched" in text
    assert "KL massive 0.64 vs control 0.61" in text and "scale 2x" in text and "within a tenth" in text
    assert "removed variance 0.041 vs 0.086; removed energy 0.0086 vs 0.018 (on the neutral text)" in text
    # successes of the KL-matched control: 20 - 10 + 12 = 22 and 10 - 9 + 7 = 8
    assert "control 22/100 right, b/c 10/12" in text and "control 8/100 right" in text
    p = _sweep(tmp_path / "old", [_row("passkey", 0.2, 0, 60, 1e-18, 0, 30, 1e-9)])  # a run without a kl control
    assert rules_v2.contextual_kl(p, "m") == (f"no KL-matched control (control kind 'kl') in {p / 'results.parquet'}",
                                              "not evaluable")


def _twins(path: Path, variants: list[dict], waves: dict, level: float | None = None) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    config = {"d_model": 64, "n_heads": 2, "context": 128, "rope_theta": 10_000.0, "variants": variants}
    (path / "manifest.json").write_text(json.dumps({"config": config}))
    twins = {"rope": {"q": 4.2, "k": 4.4}, "absolute": {"q": 1.6, "k": 1.6}, "nope": {"q": 2.2, "k": 2.2}}
    matched = {} if level is None else {"level": level, "rope": {"q": 1.0, "k": 1.0}, "nope": {"q": 2.4, "k": 2.4}}
    (path / "summary.json").write_text(json.dumps({"wavelength": {k: {"q": v, "k": v} for k, v in waves.items()},
                                                   "twins": twins, "matched_accuracy": matched}))
    return path


TWINS = [{"mechanism": m, "context": None, "rope_theta": None, "seed": None} for m in ("rope", "absolute", "nope")]
CTX512 = {"mechanism": "rope", "context": 512, "rope_theta": None, "seed": None}


def test_o4_v2_the_peak_must_move_with_the_context(tmp_path):
    one = _twins(tmp_path / "one", TWINS, {"rope": 2.76})
    assert rules.wavelength(one, "t")[1] == "reproduces"  # version 1: at the base rate
    text, verdict = rules_v2.wavelength_v2(one, "t")
    assert verdict == "not evaluable" and "base rate" in text
    moved = _twins(tmp_path / "moved", [*TWINS, CTX512], {"rope": 2.76, "rope-ctx512": 2.182})
    text, verdict = rules_v2.wavelength_v2(moved, "t")
    assert verdict == "reproduces" and "m = 0.83" in text  # ln(4 * 2.182 / 2.76) / ln 4
    still = _twins(tmp_path / "still", [*TWINS, CTX512], {"rope": 2.76, "rope-ctx512": 2.76 / 4})
    assert rules_v2.wavelength_v2(still, "t")[1] == "contradicted"  # same pair at 4x the context: did not move


def test_p8_v2_leaves_out_a_check_at_floor(tmp_path):
    p = _twins(tmp_path, TWINS, {"rope": 2.76}, level=0.01)
    assert rules.rope_cause(p, "t")[1] == "contradicted"  # the floor check (RoPE 1.0 vs nope 2.4) decides
    text, verdict = rules_v2.rope_cause_v2(p, "t")
    assert verdict == "reproduces" and "at floor: not evaluable" in text
    above = _twins(tmp_path / "b", TWINS, {"rope": 2.76}, level=0.30)
    assert rules_v2.rope_cause_v2(above, "t") == rules.rope_cause(above, "t")


def test_the_ledger_shows_every_version(tmp_path):
    from massmech.report.runs import run_folder
    from massmech.studies.analyze import AnalyzeConfig, run_analyze

    run_analyze(AnalyzeConfig(model="tiny-llama", n_tokens=256, seq_len=64, heatmap_layers=()),
                tmp_path / run_folder("analyze", "tiny-llama"), progress=False)
    t = ledger(tmp_path, models=("tiny-llama",), versions="all")
    p3 = t[(t.key == "P3") & (t.model == "tiny-llama")].set_index("version")
    assert list(p3.index) == [1, 2, 3] and p3.loc[1, "rule"] != p3.loc[2, "rule"]
    assert p3.loc[1, "timing"] == "run after rule"  # v1 was fixed on 2026-11-30, the run made now
    assert p3.loc[3, "measured"] == p3.loc[2, "measured"]  # no QK-norm: v3 is v2
    assert (t[t.key == "P5"].verdict == "not run").all()  # no sweep here: every version says so
    newest = ledger(tmp_path, models=("tiny-llama",))
    row = newest[(newest.key == "P3") & (newest.model == "tiny-llama")].iloc[0]
    earlier = f"v1 {p3.loc[1, 'verdict']}; v2 {p3.loc[2, 'verdict']}"
    assert row.version == 3 and row.earlier == earlier and row.verdict == p3.loc[3, "verdict"]
    text = ledger_markdown(tmp_path, models=("tiny-llama",))
    assert f"| **{row.verdict}** (v3) | {earlier} |" in text
    assert "**P3 v2**" in text and "## Rules and their versions" in text and "scope:" in text


def _interaction_run(path: Path, drops: dict[str, tuple[str, int, int]], n: int = 40) -> Path:
    """A sweep run folder with its cells: per task (kind, baseline right, massive right)."""
    rows = []
    for task, (kind, right_base, right_massive) in drops.items():
        for role, right in (("baseline", right_base), ("massive", right_massive)):
            key = f"{task}-{role}"
            cell = path / "cells" / "ablation" / key
            cell.mkdir(parents=True)
            verdicts = {str(u): u < right for u in range(n)}
            (cell / "cell.json").write_text(json.dumps({"data": {"verdicts": verdicts}}))
            rows.append(dict(model="m", task=task, kind=kind, role=role, key=key, evaluable=True,
                             condition="baseline" if role == "baseline" else "qk.pre.lam5", control=None,
                             rule="lambda", lam=5.0, accuracy=right / n, n=n))
    pd.DataFrame(rows).to_parquet(path / "results.parquet")
    return path


def test_p6_v2_tests_the_claim_as_an_interaction(tmp_path):
    """Version 1 reads a parametric drop as "partly"; version 2 asks whether contextual tasks lose more."""
    same = {"ctx1": ("contextual", 30, 15), "ctx2": ("contextual", 30, 15),
            "par1": ("parametric", 30, 15), "par2": ("parametric", 30, 15)}
    text, verdict = rules_v2.parametric_v2(_interaction_run(tmp_path / "same", same), "m")
    assert verdict == "not evaluable" and "= +0.00" in text  # both lose half: no interaction
    more = {"ctx1": ("contextual", 30, 3), "ctx2": ("contextual", 30, 0),
            "par1": ("parametric", 30, 29), "par2": ("parametric", 30, 27)}
    text, verdict = rules_v2.parametric_v2(_interaction_run(tmp_path / "more", more), "m")
    assert verdict == "reproduces" and "relative drop contextual 95%" in text and "parametric 7%" in text
    half = {**more, "par1": ("parametric", 30, 15), "par2": ("parametric", 30, 15)}
    assert rules_v2.parametric_v2(_interaction_run(tmp_path / "half", half), "m")[1] == "partly"
    less = {"ctx1": ("contextual", 30, 29),  # the kinds swapped "ctx2": ("contextual", 30, 27),
            "par1": ("parametric", 30, 3), "par2": ("parametric", 30, 0)}
    assert rules_v2.parametric_v2(_interaction_run(tmp_path / "less", less), "m")[1] == "contradicted"
    few = {"ctx1": ("contextual", 2, 1), "par1": ("parametric", 1, 1)}  # resamples with a baseline of 0
    text, verdict = rules_v2.parametric_v2(_interaction_run(tmp_path / "few", few, n=4), "m")
    assert verdict == "not evaluable" and text.startswith("the interaction cannot be computed")
    (tmp_path / "less" / "cells" / "ablation" / "ctx1-massive" / "cell.json").unlink()
    where = f"{tmp_path / 'less' / 'examples.parquet'} nor {tmp_path / 'less' / 'cells'}"
    assert rules_v2.parametric_v2(tmp_path / "less", "m") == (
        f"per-example verdicts not in {where} (the interaction needs them)", "not evaluable")


def test_p1_to_p3_are_judged_before_qk_norm_where_there_is_one(tmp_path):
    """Issue 26, item 5: on a QK-norm model the analyze run holds both sites, and the newest rules of
    P1-P3 judge the one the projection weights produce, the post-norm site beside it."""
    from massmech.studies.analyze import AnalyzeConfig, run_analyze

    out = tmp_path / "g"
    run_analyze(AnalyzeConfig(model="tiny-gemma3", n_tokens=256, seq_len=64, heatmap_layers=()), out, progress=False)
    by_stage = json.loads((out / "summary.json").read_text())["by_stage"]
    assert {"q.raw", "k.raw", "q.pre", "k.pre", "v.pre"} <= set(by_stage) and "v.raw" not in by_stage
    assert rules_v2.weights_stage(out) == "raw"
    for judge, old in ((rules_v2.low_frequency_v2, rules.low_frequency), (rules_v2.across_heads_v2, rules.across_heads),
                       (rules_v2.qk_not_v_v3, rules_v2.qk_not_v_v2)):
        text, verdict = judge(out, "tiny-gemma3")
        assert text.startswith("before QK-norm") and "after it" in text
        assert verdict == old(out, "tiny-gemma3", stage="raw")[1]  # the raw site decides
        assert text.endswith(f"[{old(out, 'tiny-gemma3', stage='pre')[1]} there]")


def test_a_sweep_keeps_its_per_example_verdicts_in_its_folder(tmp_path):
    """Whatever cell store a sweep uses (reproduce shares one), its folder holds every verdict."""
    from massmech.studies.ablation import SweepConfig, run_sweep

    out = tmp_path / "sweep"
    t = run_sweep(SweepConfig(models=("tiny-llama",), tasks=("kv_lookup",), n=4, rules=("topk",), ks=(1,)), out,
                  cells=tmp_path / "shared", progress=False)
    ex = pd.read_parquet(out / "examples.parquet")
    assert not (out / "cells").exists() and len(ex) == 4 * len(t)
    for r in t.itertuples():
        mine = ex[ex.key == r.key]
        assert mine.correct.mean() == pytest.approx(r.accuracy) and rules_v2._verdicts(out, r.key) == dict(
            zip(mine.uid, mine.correct, strict=True))
