"""Your own tasks (issue 15): records, files and datasets through evaluate, ablate and the CLI."""

import json

import pandas as pd
import pytest

import massmech as mm
from massmech.causal.evaluate import evaluate
from massmech.causal.tasks.base import Task
from massmech.causal.tasks.custom import RecordTask
from massmech.cli import main
from massmech.errors import TaskError

ROWS = [{"id": f"r{i}", "passage": f"The code word is {w}.", "question": "What is the code word?", "word": w}
        for i, w in enumerate(["apple", "river", "stone", "cloud", "maple", "tiger", "piano", "lemon", "ocean", "amber",
                               "cedar", "delta"])]


def test_formats_build_the_expected_examples():
    exact = Task.from_records(ROWS, fields={"question": "question", "context": "passage", "answer": "word", "id": "id"})
    e = exact.examples(3, seed=1)[0]
    assert e.prompt.startswith("The code word is") and e.prompt.endswith("Answer:") and e.answer.strip() in e.prompt
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
    assert shots.max_n() == 10 and shots.examples(1)[0].prompt.count("Answer:") == 3


def test_bad_rows_are_clear_errors(tmp_path):
    with pytest.raises(TaskError, match="needs a 'answer' field"):
        Task.from_records(ROWS, fields={"question": "question"})
    with pytest.raises(TaskError, match="no column"):
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
    assert list(table.role) == ["baseline", "massive", "control"] and (table.task == spec).all()
    assert main(["sweep", "--models", "tiny-llama", "--tasks", spec, "--n", "4", "--rules", "topk", "--ks", "2", "--controls", "matched",
                 "--out", str(tmp_path / "cli"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["cells"] == 3
    with pytest.raises(TaskError, match="names its fields"):
        get_task(f"file:{path}")
