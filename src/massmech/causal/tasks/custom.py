"""Your own tasks: records, files (JSON, JSONL, CSV, parquet) or ``datasets`` datasets.

:class:`RecordTask` (also ``Task.from_records``, ``Task.from_file``, ``Task.from_dataset``) turns
rows into :class:`~massmech.causal.tasks.base.Example` s through a field mapping and an answer
*format*, and runs through the same :func:`~massmech.causal.evaluate.evaluate`, ``ablate`` and
CLI as the built-in suite:

==========  ================================================================  ================
format      what the row's answer is                                          scoring
==========  ================================================================  ================
``exact``   the gold continuation                                             greedy exact match
``choice``  the right entry of ``choices`` (its text, letter or index);      log-probability
            the options are shown lettered (A, B, ...) and the letter scored  of each letter
``yesno``   a boolean (true/false, yes/no, 1/0): a two-way Yes/No choice       log-probability
``number``  a math answer: its last number is the gold continuation           greedy exact match
==========  ================================================================  ================

Fields (``fields={"question": "q", "answer": "a"}``): ``question`` and ``answer`` are required;
``context`` (prepended), ``choices`` (a list, for ``choice``) and ``id`` (a stable uid; default
the row index) are optional. ``n_shots`` solved rows, drawn with the seed and excluded from the
evaluated ones, are prepended as demonstrations.

>>> task = RecordTask.from_records([{"q": f"What is {i} + 1?", "a": str(i + 1)} for i in range(20)],
...                                fields={"question": "q", "answer": "a"}, name="add_one")
>>> ex = task.examples(2, seed=0)[0]
>>> ex.prompt.endswith("Answer:"), ex.answer.startswith(" ")
(True, True)
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from massmech.causal.tasks.base import Example, Task
from massmech.errors import TaskError

FORMATS = ("exact", "choice", "yesno", "number")
_TRUE, _FALSE = {"true", "yes", "1", "t", "y"}, {"false", "no", "0", "f", "n"}
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


@dataclass(frozen=True, eq=False)
class RecordTask(Task):
    """A task defined by rows (see the module docstring). Build it with the ``from_*`` constructors.

    >>> rows = [{"q": "Which is a fruit?", "opts": ["stone", "apple"], "label": "B"},
    ...         {"q": "Which is a colour?", "opts": ["red", "dog"], "label": 0}]
    >>> task = RecordTask.from_records(rows, fields={"question": "q", "choices": "opts", "answer": "label"},
    ...                                format="choice", name="quiz", kind="parametric")
    >>> task.name, task.kind, task.scoring
    ('quiz', 'parametric', 'choice')
    >>> ex = task.examples(1)[0]; print(ex.prompt + ex.options[ex.label])
    Which is a colour?
    A. red
    B. dog
    Answer: A
    """

    rows: tuple = field(repr=False, default=())
    fields: Mapping[str, str] = field(default_factory=dict)
    format: str = "exact"
    task_name: str = "custom"
    task_kind: str = "contextual"
    n_shots: int = 0
    source: str = "records"

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise TaskError(f"format must be one of {FORMATS}, got {self.format!r}")
        if self.task_kind not in ("contextual", "parametric"):
            raise TaskError(f"kind must be 'contextual' or 'parametric', got {self.task_kind!r}")
        for need in ("question", "answer") + (("choices",) if self.format == "choice" else ()):
            if need not in self.fields:
                raise TaskError(f"the {self.format!r} format needs a {need!r} field: fields={{'{need}': COLUMN}}")
        if not self.rows:
            raise TaskError(f"task {self.task_name!r} has no rows")
        missing = sorted({c for c in self.fields.values() if c not in self.rows[0]})
        if missing:
            raise TaskError(f"the rows have no column(s) {missing}; they have {sorted(self.rows[0])}")
        if not 0 <= self.n_shots < len(self.rows):
            raise TaskError(f"n_shots must be in [0, {len(self.rows)}), got {self.n_shots}")
        for i, row in enumerate(self.rows):
            self._answer(row, i)  # every answer parses: an error now, not mid-evaluation

    # the Task protocol reads these as class attributes; here they are per instance
    @property
    def name(self) -> str:  # type: ignore[override]
        return self.task_name

    @property
    def kind(self) -> str:  # type: ignore[override]
        return self.task_kind

    @property
    def scoring(self) -> str:  # type: ignore[override]
        return "choice" if self.format in ("choice", "yesno") else "exact"

    def config(self) -> dict:
        """Name, mapping, format and a hash of the rows (what a result depends on), JSON.

        >>> RecordTask.from_records([{"q": "1 + 1 =", "a": 2}], fields={"question": "q", "answer": "a"}).config()
        {'name': 'custom', 'source': 'records', 'fields': {'question': 'q', 'answer': 'a'}, 'format': 'exact', 'kind': 'contextual', 'n_shots': 0, 'rows': 1, 'rows_sha256': '8f240febb38d30bb'}
        """
        blob = json.dumps(list(self.rows), sort_keys=True, default=str).encode()
        return {"name": self.task_name, "source": self.source, "fields": dict(self.fields), "format": self.format,
                "kind": self.task_kind, "n_shots": self.n_shots, "rows": len(self.rows),
                "rows_sha256": hashlib.sha256(blob).hexdigest()[:16]}

    # ----------------------------------------------------------------- examples
    def _answer(self, row: Mapping, i: int) -> tuple[str, tuple[str, ...], int]:
        """(exact answer, options, label) of a row."""
        raw = row[self.fields["answer"]]
        if self.format == "exact":
            return " " + str(raw).strip(), (), -1
        if self.format == "number":
            found = _NUMBER.findall(str(raw))
            if not found:
                raise TaskError(f"row {i}: no number in the answer {str(raw)[:60]!r} (format 'number')")
            return " " + found[-1].replace(",", ""), (), -1
        if self.format == "yesno":
            text = str(raw).strip().lower()
            if text not in _TRUE | _FALSE:
                raise TaskError(f"row {i}: the answer {raw!r} is not a boolean (true/false, yes/no, 1/0)")
            return "", (" Yes", " No"), 0 if text in _TRUE else 1
        choices = list(row[self.fields["choices"]])
        if not 2 <= len(choices) <= 26:
            raise TaskError(f"row {i}: {len(choices)} choices; need 2 to 26")
        letters = [chr(65 + j) for j in range(len(choices))]
        text = str(raw).strip()
        if text in letters:
            label = letters.index(text)
        elif text.isdigit() and int(text) < len(choices):
            label = int(text)
        elif text in [str(c).strip() for c in choices]:
            label = [str(c).strip() for c in choices].index(text)
        else:
            raise TaskError(f"row {i}: the answer {text!r} is neither a letter, an index nor one of the choices")
        return "", tuple(" " + x for x in letters), label

    def _question(self, row: Mapping) -> str:
        parts = []
        if "context" in self.fields and row.get(self.fields["context"]):
            parts.append(str(row[self.fields["context"]]).strip())
        parts.append(str(row[self.fields["question"]]).strip())
        if self.format == "choice":
            parts += [f"{chr(65 + j)}. {str(c).strip()}" for j, c in enumerate(row[self.fields["choices"]])]
        if self.format == "yesno":
            parts[-1] += " Answer Yes or No."
        return "\n".join(parts) + "\nAnswer:"

    def _solved(self, row: Mapping, i: int) -> str:
        answer, options, label = self._answer(row, i)
        return self._question(row) + (answer if not options else options[label])

    def _pool(self, seed: int) -> list[Example]:
        import random

        ids = [self._uid(row, i) for i, row in enumerate(self.rows)]
        shots = sorted(random.Random(f"shots/{seed}").sample(range(len(self.rows)), self.n_shots))
        head = "".join(self._solved(self.rows[i], i) + "\n\n" for i in shots)
        out = []
        for i, row in enumerate(self.rows):
            if i in shots:
                continue
            answer, options, label = self._answer(row, i)
            group = "" if label < 0 else options[label].strip()
            out.append(Example(uid=ids[i], prompt=head + self._question(row), answer=answer, options=options,
                               label=label, group=group))
        return out

    def _uid(self, row: Mapping, i: int) -> int:
        if "id" not in self.fields:
            return i
        value = row[self.fields["id"]]
        try:
            return int(value)
        except (TypeError, ValueError):
            return int(hashlib.sha256(str(value).encode()).hexdigest()[:12], 16)

    # ----------------------------------------------------------------- constructors
    @classmethod
    def from_records(cls, records: Iterable[Mapping[str, Any]], *, fields: Mapping[str, str], format: str = "exact",
                     name: str = "custom", kind: str = "contextual", n_shots: int = 0,
                     source: str = "records") -> RecordTask:
        """A task from a list of dicts (see the module docstring).

        >>> rows = [{"q": f"{i} + {i} =", "a": f"The sum is {2 * i}."} for i in range(5)]
        >>> task = RecordTask.from_records(rows, fields={"question": "q", "answer": "a"}, format="number", n_shots=1)
        >>> print(task.examples(1, seed=0)[0].prompt)  # one solved row first, as a demonstration
        1 + 1 =
        Answer: 2
        <BLANKLINE>
        4 + 4 =
        Answer:
        """
        rows = tuple(dict(r) for r in records)
        return cls(rows=rows, fields=dict(fields), format=format, task_name=name, task_kind=kind, n_shots=n_shots,
                   source=source)

    @classmethod
    def from_file(cls, path: str | os.PathLike, **kwargs: Any) -> RecordTask:
        """A task from a ``.jsonl``, ``.json`` (a list of objects), ``.csv`` or ``.parquet`` file.

        >>> import json, tempfile
        >>> path = Path(tempfile.mkdtemp()) / "facts.jsonl"
        >>> _ = path.write_text("\\n".join(json.dumps({"q": f"Is {i} even?", "a": i % 2 == 0}) for i in range(6)))
        >>> task = RecordTask.from_file(path, fields={"question": "q", "answer": "a"}, format="yesno")
        >>> task.name, task.scoring, sorted(ex.group for ex in task.examples(6))
        ('facts', 'choice', ['No', 'No', 'No', 'Yes', 'Yes', 'Yes'])
        """
        import pandas as pd

        path = Path(path)
        if not path.is_file():
            raise TaskError(f"no task file {path}")
        suffix = path.suffix.lower()
        if suffix == ".jsonl":
            rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        elif suffix == ".json":
            rows = json.loads(path.read_text())
            if not isinstance(rows, list):
                raise TaskError(f"{path}: a .json task file holds a list of objects")
        elif suffix in (".csv", ".parquet"):
            frame = pd.read_csv(path) if suffix == ".csv" else pd.read_parquet(path)
            rows = frame.to_dict(orient="records")
        else:
            raise TaskError(f"{path}: task files are .jsonl, .json, .csv or .parquet")
        kwargs.setdefault("name", path.stem)
        return cls.from_records(rows, source=str(path), **kwargs)

    @classmethod
    def from_dataset(cls, dataset: Any, *, split: str | None = None, **kwargs: Any) -> RecordTask:
        """A task from a ``datasets.Dataset`` (or ``DatasetDict`` with ``split``), a
        ``save_to_disk`` folder or a hub id (which needs a network; offline it fails with a
        clear message).

        >>> import datasets, tempfile
        >>> folder = tempfile.mkdtemp()
        >>> datasets.Dataset.from_list([{"q": "2 + 2 =", "a": "4"}, {"q": "3 + 3 =", "a": "6"}]).save_to_disk(folder)
        >>> [ex.answer for ex in RecordTask.from_dataset(folder, fields={"question": "q", "answer": "a"}).examples(2)]
        [' 6', ' 4']
        """
        name = dataset if isinstance(dataset, str) else getattr(dataset, "info", None) and dataset.info.dataset_name
        if isinstance(dataset, (str, os.PathLike)):
            import datasets

            try:
                if Path(dataset).is_dir():
                    dataset = datasets.load_from_disk(str(dataset))
                else:
                    _hub_reachable(str(dataset))  # offline: fail now, not after the client's retries
                    dataset = datasets.load_dataset(str(dataset), split=split)
            except Exception as err:  # noqa: BLE001 - any hub failure gets the same advice
                raise TaskError(
                    f"could not load the dataset {dataset!r} ({err.__class__.__name__}: {str(err)[:120]}); a hub id "
                    "needs a network: offline, save it with save_to_disk or export JSONL and use from_file"
                ) from err
        if hasattr(dataset, "keys") and not hasattr(dataset, "column_names"):  # a DatasetDict
            if split is None or split not in dataset:
                raise TaskError(f"pick a split: split= one of {sorted(dataset.keys())}")
            dataset = dataset[split]
        kwargs.setdefault("name", str(name or "dataset"))
        return cls.from_records(dataset.to_list(), source=f"dataset {kwargs['name']}", **kwargs)


def _hub_reachable(name: str) -> None:
    """Raise at once when the Hugging Face hub cannot be reached (offline env flags, or no connection)."""
    import socket

    if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1":
        raise ConnectionError("HF_HUB_OFFLINE / HF_DATASETS_OFFLINE is set")
    try:
        socket.create_connection(("huggingface.co", 443), timeout=3).close()
    except OSError as err:
        raise ConnectionError(f"the hub is not reachable for {name!r} ({err})") from err


def task_from_string(spec: str, **params: Any) -> RecordTask:
    """``"file:PATH#question=q&answer=a&format=yesno"`` -> the task (see :func:`massmech.causal.tasks.builtin.get_task`).

    >>> task_from_string("file:x.jsonl")
    Traceback (most recent call last):
    ...
    massmech.errors.TaskError: a file task names its fields: file:PATH#question=COL&answer=COL[&format=F...]
    """
    path, _, opts = spec.removeprefix("file:").partition("#")
    if not opts:
        raise TaskError("a file task names its fields: file:PATH#question=COL&answer=COL[&format=F...]")
    fields, kw = {}, {}
    for item in opts.split("&"):
        key, sep, value = item.partition("=")
        if not sep:
            raise TaskError(f"file task option {item!r} is not NAME=VALUE")
        key, value = key.strip(), value.strip()
        if key in ("format", "kind", "name"):
            kw[key] = value
        elif key == "n_shots":
            kw[key] = int(value)
        else:
            fields[key] = value
    return RecordTask.from_file(path, fields=fields, **(kw | params))


def task_from_spec(path: str, fields: Sequence[str], *, format: str = "exact", kind: str = "contextual",
                   n_shots: int = 0) -> RecordTask:
    """The CLI's ``--task-file PATH --field question=q --field answer=a --format F``.

    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "capitals.csv"
    >>> _ = path.write_text("country,capital\\nPeru,Lima\\nChile,Santiago\\n")
    >>> task = task_from_spec(str(path), ["question=country", "answer=capital"])
    >>> task.name, task.format, task.examples(1)[0].answer
    ('capitals', 'exact', ' Santiago')
    """
    mapping = {}
    for item in fields:
        key, sep, column = item.partition("=")
        if not sep:
            raise TaskError(f"--field takes NAME=COLUMN, got {item!r}")
        mapping[key.strip()] = column.strip()
    return RecordTask.from_file(path, fields=mapping, format=format, kind=kind, n_shots=n_shots)
