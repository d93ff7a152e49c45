"""Your own tasks (issue 15): records, files and datasets through evaluate, ablate and the CLI."""

import json
import re

import pandas as pd
import pytest

import massmech as mm
from massmech.causal.evaluate import evaluate
from massmech.causal.tasks.base import Task
from massmech.causal.tasks.custom import RecordTask, task_from_spec, task_from_string
from massmech.cli import main
from massmech.errors import TaskError

ROWS = [{"id": f"r{i}", "passage": f"The code word is {w}.", "question": "What is the code word?", "word": w}
        for i, w in enumerate(["apple", "river", "stone", "cloud", "maple", "tiger", "piano", "lemon", "ocean", "amber",
                               "cedar", "delta"])]


def test_formats_build_the_expected_examples():
    exact = Task.from_records(ROWS, fields={"question": "question", "context": "passage", "answer": "word", "id": "id"})
    e = exact.examples(3, seed=1)[0]
    assert e.prompt.startswith("The code word is") and e.prompt.endswith("\nWhat is the code word?")
    assert e.answer.strip() in e.prompt and "Answer:" not in e.prompt  # the context, then the question as written
    assert exact.scoring == "exact" and exact.name == "custom" and len({x.uid for x in exact.examples(12)}) == 12
    mc = Task.from_records([{"q": "2 + 2?", "opts": ["3", "4", "5"], "a": "B"}, {"q": "1 + 1?", "opts": ["2", "7"], "a": 0}],
                           fields={"question": "q", "choices": "opts", "answer": "a"}, format="choice")
    first, second = sorted(mc.examples(2), key=lambda x: x.uid)
    assert first.options == (" A", " B", " C") and first.label == 1 and "B. 4" in first.prompt and second.label == 0
    yn = Task.from_records([{"s": "Paris is in France.", "t": True}, {"s": "Rome is in Peru.", "t": "false"}],
                           fields={"question": "s", "answer": "t"}, format="yesno")
    assert sorted((x.uid, x.label) for x in yn.examples(2)) == [(0, 0), (1, 1)] and yn.chance(2) == 0.5
    num = Task.from_records([{"q": "Sum?", "a": "3 + 4 = 7, so #### 1,200"}], fields={"question": "q", "answer": "a"},
                            format="number")
    assert num.examples(1)[0].answer == " 1200"
    shots = Task.from_records(ROWS, fields={"question": "question", "context": "passage", "answer": "word"}, n_shots=2)
    demo = shots.examples(1)[0].prompt
    assert shots.max_n() == 10 and demo.count("What is the code word?") == 3
    assert len(re.findall(r"What is the code word\? [a-z]+\n\n", demo)) == 2  # each demonstration, then its answer


def test_bad_rows_are_clear_errors(tmp_path):
    with pytest.raises(TaskError, match="needs a 'answer' field"):
        Task.from_records(ROWS, fields={"question": "question"})
    with pytest.raises(TaskError, match=r"record 0 \(0-based index\): no field 'q' \(mapped as question='q'"):
        Task.from_records(ROWS, fields={"question": "q", "answer": "word"})
    with pytest.raises(TaskError, match="not a boolean"):
        Task.from_records([{"q": "x", "a": "maybe"}], fields={"question": "q", "answer": "a"}, format="yesno")
    with pytest.raises(TaskError, match="neither a letter"):
        Task.from_records([{"q": "x", "c": ["a", "b"], "a": "Z"}], fields={"question": "q", "choices": "c", "answer": "a"},
                          format="choice")
    with pytest.raises(TaskError, match="no task file"):
        Task.from_file(tmp_path / "none.jsonl", fields={"question": "q", "answer": "a"})
    with pytest.raises(TaskError, match="network"):
        Task.from_dataset("no-such-org/no-such-dataset-massmech", split="train", fields={"question": "q", "answer": "a"})


def test_files_and_datasets_give_the_same_task(tmp_path):
    import datasets

    fields = {"question": "question", "context": "passage", "answer": "word", "id": "id"}
    path = tmp_path / "codes.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in ROWS))
    pd.DataFrame(ROWS).to_csv(tmp_path / "codes.csv", index=False)
    a = Task.from_file(path, fields=fields)
    b = Task.from_file(tmp_path / "codes.csv", fields=fields)
    c = Task.from_dataset(datasets.Dataset.from_list(ROWS), fields=fields, name="codes")
    assert a.examples(8, seed=3) == b.examples(8, seed=3) == c.examples(8, seed=3)
    assert a.config()["rows_sha256"] == c.config()["rows_sha256"] and a.name == "codes"


@pytest.mark.integration
def test_a_jsonl_task_and_a_dataset_run_through_ablate(tmp_path, capsys):
    import datasets

    path = tmp_path / "codes.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in ROWS))
    args = ["ablate", "--model", "smollm2-135m", "--task-file", str(path), "--field", "question=question",
            "--field", "context=passage", "--field", "answer=word", "--n", "12", "--json"]
    assert main(args) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["task"] == "codes" and {"baseline", "massive", "control"} <= set(res)
    assert res["baseline"]["n"] == 12 and res["massive"]["p_value"] is not None
    task = Task.from_dataset(datasets.Dataset.from_list(ROWS), fields={"question": "question", "context": "passage",
                                                                       "answer": "word"}, name="codes-ds")
    out = mm.ablate("smollm2-135m", task, n=12)
    assert out["task"] == "codes-ds" and out["control"]["n"] == 12
    assert main(["ablate", "--model", "smollm2-135m", "--n", "4"]) == 2  # neither --task nor --task-file


def test_record_tasks_evaluate_on_a_tiny_model():
    model = mm.load_model("tiny-llama")
    task = RecordTask.from_records(ROWS, fields={"question": "question", "context": "passage", "answer": "word"})
    df = evaluate(model, task, {"baseline": None}, n=6, progress=False)
    assert len(df) == 6 and set(df.columns) >= {"uid", "correct", "pred"}


def test_a_file_task_runs_through_a_sweep_wherever_a_name_goes(tmp_path, capsys):
    from massmech.causal.tasks.builtin import get_task
    from massmech.studies.ablation import SweepConfig, run_sweep

    path = tmp_path / "codes.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in ROWS))
    spec = f"file:{path}#question=question&context=passage&answer=word&name=codes"
    assert get_task(spec).examples(4) == Task.from_file(path, fields={"question": "question", "context": "passage",
                                                                     "answer": "word"}, name="codes").examples(4)
    cfg = SweepConfig(models=("tiny-llama",), tasks=(spec,), n=6, rules=("topk",), ks=(2,), controls=("matched",))
    table = run_sweep(cfg, tmp_path / "sweep", progress=False)
    assert list(table.role) == ["baseline", "massive", "control"] and (table.task_spec == spec).all()
    assert (table.task == "codes").all()  # the short name: figure axes and tables stay readable
    assert main(["sweep", "--models", "tiny-llama", "--tasks", spec, "--n", "4", "--rules", "topk", "--ks", "2", "--controls", "matched",
                 "--out", str(tmp_path / "cli"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["cells"] == 3
    with pytest.raises(TaskError, match="names its fields"):
        get_task(f"file:{path}")


# ---------------------------------------------------------------- issue 25: your own task as written
CAPITALS = [("Poland", "Warsaw"), ("Peru", "Lima"), ("Chile", "Santiago"), ("Kenya", "Nairobi"), ("Japan", "Tokyo"),
            ("France", "Paris"), ("Italy", "Rome"), ("Germany", "Berlin")]
FACTS = [{"q": f"The capital of {country} is", "a": capital} for country, capital in CAPITALS]
QA = {"question": "q", "answer": "a"}


def _jsonl(path, lines):
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    return path


def test_an_exact_prompt_is_the_question_as_written():
    task = Task.from_records(FACTS, fields=QA)
    assert {ex.prompt for ex in task.examples(8)} == {r["q"] for r in FACTS}  # no cue appended
    assert task.first_prompt() == task.examples(8)[0].prompt and task.config()["template"] == "{question}"
    cued = Task.from_records([{"q": "Q: What is the capital of Peru? Answer:", "a": "Lima"}], fields=QA)
    assert cued.first_prompt() == "Q: What is the capital of Peru? Answer:"  # not '...? Answer:\nAnswer:'
    number = Task.from_records([{"q": "6 * 7 =", "a": "#### 42"}], fields=QA, format="number").examples(1)[0]
    assert (number.prompt, number.answer) == ("6 * 7 =", " 42")
    # the defaults of choice and yesno keep their cue; chat leaves it to the assistant's turn
    yes = Task.from_records([{"q": "Is Lima in Peru?", "a": True}], fields=QA, format="yesno")
    assert yes.first_prompt() == "Is Lima in Peru? Answer Yes or No.\nAnswer:"
    chat = Task.from_records([{"q": "Is Lima in Peru?", "a": True}], fields=QA, format="yesno", chat=True)
    assert chat.first_prompt() == "Is Lima in Peru? Answer Yes or No." and chat.examples(1)[0].chat
    # a row with an empty context reads without it
    ctx = Task.from_records([{"c": "", "q": "2 + 2 =", "a": 4}, {"c": "Add.", "q": "1 + 1 =", "a": 2}],
                            fields={"question": "q", "context": "c", "answer": "a"})
    assert sorted(ex.prompt for ex in ctx.examples(2)) == ["2 + 2 =", "Add.\n1 + 1 ="]


def test_a_template_is_applied_everywhere(tmp_path):
    rows = [{"country": c, "capital": k, "region": "the world"} for c, k in CAPITALS]
    fields = {"question": "country", "answer": "capital"}
    template = "Q: What is the capital of {question}, in {region}? {{braces}}\nA:"
    task = Task.from_records(rows, fields=fields, template=template)
    ex = task.examples(1)[0]
    assert ex.prompt == f"Q: What is the capital of {rows[ex.uid]['country']}, in the world? {{braces}}\nA:"
    path = _jsonl(tmp_path / "capitals.jsonl", rows)
    from_file = Task.from_file(path, fields=fields, template=template)
    spec = task_from_spec(str(path), ["question=country", "answer=capital"], template=template)
    encoded = template.replace("\n", "%0A").replace("&", "%26")
    string = task_from_string(f"file:{path}#question=country&answer=capital&template={encoded}")
    assert task.examples(5) == from_file.examples(5) == spec.examples(5) == string.examples(5)
    shots = Task.from_records(rows, fields=fields, template="Capital of {question}:", n_shots=2).first_prompt()
    assert len(re.findall(r"^Capital of \w+: \w+$", shots, re.M)) == 2 and shots.endswith(":")  # demos too
    choice = Task.from_records([{"q": "2 + 2?", "o": ["3", "4"], "a": "4"}], format="choice",
                               fields={"question": "q", "choices": "o", "answer": "a"},
                               template="Question: {question}\nOptions:\n{choices}\nThe answer is")
    assert choice.first_prompt() == "Question: 2 + 2?\nOptions:\nA. 3\nB. 4\nThe answer is"


def test_bad_templates_are_refused():
    with pytest.raises(TaskError, match="shows the answer"):
        Task.from_records(FACTS, fields=QA, template="{q} {a}")
    with pytest.raises(TaskError, match=r"record 0 \(0-based index\): no field 'topic' \(named by the template"):
        Task.from_records(FACTS, fields=QA, template="{topic}: {question}")
    with pytest.raises(TaskError, match="literal brace"):
        Task.from_records(FACTS, fields=QA, template="{question")
    with pytest.raises(TaskError, match="not a field name"):
        Task.from_records(FACTS, fields=QA, template="{} {question.upper}")


def test_a_chat_default_keeps_its_cue_for_a_model_without_a_chat_template():
    """Issue 26: chat drops the Answer: cue for the assistant's turn; with no chat template to give
    that turn (Gemma-3's GGUF, the tiny models), the model reads the cued prompt instead."""
    import massmech as mm
    from massmech.causal.evaluate import read_text

    row = [{"q": "Is Lima in Peru?", "a": True}]
    chat = Task.from_records(row, fields=QA, format="yesno", chat=True)
    ex = chat.examples(1)[0]
    assert (ex.prompt, ex.plain) == ("Is Lima in Peru? Answer Yes or No.", "Is Lima in Peru? Answer Yes or No.\nAnswer:")
    assert read_text(mm.load_model("tiny-llama"), ex).endswith("Answer Yes or No.\nAnswer:")
    assert chat.config()["plain_template"] == "{question} Answer Yes or No.\nAnswer:"
    # demonstrations read as the question does: with the cue
    rows = [{"q": f"Is city {i} in Peru?", "a": i % 2 == 0} for i in range(6)]
    shot = Task.from_records(rows, fields=QA, format="yesno", chat=True, n_shots=1).examples(1)[0]
    assert shot.plain.count("Answer Yes or No.\nAnswer:") == 2 and "Answer:" not in shot.prompt
    # no cue to keep (exact), a template of the user's, or no chat: nothing changes, keys included
    for task in (Task.from_records(FACTS, fields=QA, chat=True), Task.from_records(row, fields=QA, format="yesno"),
                 Task.from_records(row, fields=QA, format="yesno", chat=True, template="{question}")):
        assert task.examples(1)[0].plain == "" and "plain_template" not in task.config()


def test_config_changes_with_template_and_chat():
    plain = Task.from_records(FACTS, fields=QA).config()
    templated = Task.from_records(FACTS, fields=QA, template="{question}\nAnswer:").config()
    chat = Task.from_records(FACTS, fields=QA, chat=True).config()
    assert plain["template"] == "{question}" and templated["template"] == "{question}\nAnswer:"
    assert (plain["chat"], chat["chat"]) == (False, True) and len({json.dumps(c) for c in (plain, templated, chat)}) == 3
    assert Task.from_records(FACTS, fields={**QA, "context": "q"}).config()["template"] == "{context}\n{question}"


def test_a_malformed_file_names_the_file_and_line(tmp_path):
    path = _jsonl(tmp_path / "facts.jsonl", [FACTS[0], "", '{"q": "The capital of Peru is", "a": "Lima",}'])
    with pytest.raises(TaskError, match=r"facts\.jsonl, line 3: not valid JSON \(Expecting property name"):
        Task.from_file(path, fields=QA)
    with pytest.raises(TaskError, match=r"facts\.jsonl, line 2: a JSONL line holds one JSON object"):
        Task.from_file(_jsonl(path, [FACTS[0], "[1, 2]"]), fields=QA)
    bad_json = tmp_path / "facts.json"
    bad_json.write_text('[\n{"q": "x", "a": "y"},\n{"q": }\n]')
    with pytest.raises(TaskError, match=r"facts\.json, line 3: not valid JSON"):
        Task.from_file(bad_json, fields=QA)


def test_a_missing_column_names_the_row_and_field(tmp_path):
    path = _jsonl(tmp_path / "facts.jsonl", [FACTS[0], "", {"q": "The capital of Peru is", "answer": "Lima"}])
    with pytest.raises(TaskError, match=r"facts\.jsonl, line 3: no field 'a' \(mapped as answer='a'; the row has "
                                        r"\['answer', 'q'\]\)"):
        Task.from_file(path, fields=QA)
    pd.DataFrame(FACTS).to_csv(tmp_path / "facts.csv", index=False)
    with pytest.raises(TaskError, match=r"facts\.csv, row 1 \(1-based, header excluded\): no field 'target' "
                                        r"\(mapped as answer='target'"):
        Task.from_file(tmp_path / "facts.csv", fields={"question": "q", "answer": "target"})
    with pytest.raises(TaskError, match=r"record 1 \(0-based index\): no field 'q'"):
        Task.from_records([FACTS[0], {"a": "Lima"}], fields=QA)


def test_null_nan_and_empty_answers_and_questions_are_refused(tmp_path):
    import datasets

    path = _jsonl(tmp_path / "facts.jsonl", [FACTS[0], {"q": "The capital of Peru is", "a": None}])
    with pytest.raises(TaskError, match=r"facts\.jsonl, line 2: the answer \(field 'a'\) is null"):
        Task.from_file(path, fields=QA)
    (tmp_path / "facts.csv").write_text("q,a\nThe capital of Peru is,Lima\nThe capital of Chile is,\n")
    with pytest.raises(TaskError, match=r"facts\.csv, row 2 \(1-based, header excluded\): the answer \(field 'a'\) is NaN"):
        Task.from_file(tmp_path / "facts.csv", fields=QA)
    with pytest.raises(TaskError, match=r"record 1 \(0-based index\): the question \(field 'q'\) is empty"):
        Task.from_records([FACTS[0], {"q": "  ", "a": "Lima"}], fields=QA)
    with pytest.raises(TaskError, match=r"record 0 \(0-based index\): the answer \(field 'a'\) is empty"):
        Task.from_records([{"q": "x", "a": ""}, FACTS[0]], fields=QA, format="yesno")
    with pytest.raises(TaskError, match=r"dataset caps, row 1 \(0-based index\): the question \(field 'q'\) is null"):
        Task.from_dataset(datasets.Dataset.from_list([FACTS[0], {"q": None, "a": "Lima"}]), fields=QA, name="caps")
    with pytest.raises(TaskError, match=r"line 2: no number in the answer"):
        Task.from_file(_jsonl(path, [{"q": "1 + 1 =", "a": "2"}, {"q": "x", "a": "none"}]), fields=QA,
                       format="number")


@pytest.mark.integration
def test_the_guide_example_scores_as_written_on_smollm2():
    """The own-task guide's capitals, asked as written (issue 25: the old cue made SmolLM2 answer <|im_end|>)."""
    task = Task.from_records(FACTS, fields=QA, kind="parametric")
    df = evaluate(mm.load_model("smollm2-135m"), task, {"baseline": None}, n=len(FACTS), progress=False)
    assert df.correct.mean() > 0, df[["uid", "pred"]]  # measured 0.75 (6/8); 0.00 with the old "\nAnswer:" cue
    assert {ex.prompt for ex in task.examples(len(FACTS))} == {r["q"] for r in FACTS}
