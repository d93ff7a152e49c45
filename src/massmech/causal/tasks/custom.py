"""Your own tasks: records, files (JSON, JSONL, CSV, parquet) or ``datasets`` datasets.

:class:`RecordTask` (also ``Task.from_records``, ``Task.from_file``, ``Task.from_dataset``) turns
rows into :class:`~massmech.causal.tasks.base.Example` s through a field mapping, an answer
*format* and a prompt *template*, and runs through the same
:func:`~massmech.causal.evaluate.evaluate`, ``ablate`` and CLI as the built-in suite:

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
``context``, ``choices`` (a list, for ``choice``) and ``id`` (a stable uid; default the row
index) are optional. ``n_shots`` solved rows, drawn with the seed and excluded from the evaluated
ones, are prepended as demonstrations (each its prompt, then its answer, a blank line between).

The prompt is ``template`` (Python ``str.format``) filled with ``{question}``, ``{context}``,
``{choices}`` (the options as lettered lines ``A. ...``) and any other column of the row by its
name (``{{`` and ``}}`` are literal braces). The default (:func:`default_template`, shown by
``config()``) asks an ``exact`` or ``number`` question **as written**, with no cue appended;
``choice`` and ``yesno`` end with an ``Answer:`` cue. A mapped context comes first, on its own
line; a row with an empty context reads without it. ``chat=True`` asks each prompt as a user turn
of the model's chat template (the defaults then drop the ``Answer:`` cue: the assistant's turn is
the cue; a model without a chat template reads the prompt with it, :attr:`RecordTask.plain_template`).

>>> task = RecordTask.from_records([{"q": f"{i} + 1 =", "a": str(i + 1)} for i in range(20)],
...                                fields={"question": "q", "answer": "a"}, name="add_one")
>>> ex = task.examples(2, seed=0)[0]
>>> ex.prompt, ex.answer
('12 + 1 =', ' 13')
>>> RecordTask.from_records([{"q": "Peru", "a": "Lima"}], fields={"question": "q", "answer": "a"},
...                        template="The capital of {question} is").first_prompt()
'The capital of Peru is'
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import string
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from massmech.causal.tasks.base import Example, Task
from massmech.causal.tasks.records import Origin, _hub_reachable, blank, check_row, read_rows
from massmech.causal.tasks.templates import (
    FORMATS,
    MAPPED,
    default_template,
    template_columns,
)
from massmech.errors import TaskError

_TRUE, _FALSE = {"true", "yes", "1", "t", "y"}, {"false", "no", "0", "f", "n"}
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


@dataclass(frozen=True, eq=False)
class RecordTask(Task):
    """A task defined by rows (see the module docstring). Build it with the ``from_*`` constructors.

    >>> rows = [{"q": "Which is a fruit?", "opts": ["stone", "apple"], "label": "B"},
    ...         {"q": "Which is a colour?", "opts": ["red", "dog"], "label": 0}]
    >>> task = RecordTask.from_records(rows, fields={"question": "q", "choices": "opts", "answer": "label"},
    ...                                format="choice", name="quiz", kind="parametric")
    >>> task.name, task.kind, task.scoring, task.prompt_template
    ('quiz', 'parametric', 'choice', '{question}\\n{choices}\\nAnswer:')
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
    template: str | None = None  # None: default_template(format, context mapped, chat)
    chat: bool = False
    origin: Origin | None = field(repr=False, default=None)  # names rows in errors (from_file sets it)

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise TaskError(f"format must be one of {FORMATS}, got {self.format!r}")
        if self.task_kind not in ("contextual", "parametric"):
            raise TaskError(f"kind must be 'contextual' or 'parametric', got {self.task_kind!r}")
        for need in ("question", "answer") + (("choices",) if self.format == "choice" else ()):
            if need not in self.fields:
                raise TaskError(f"the {self.format!r} format needs a {need!r} field: fields={{'{need}': COLUMN}}")
        if not isinstance(self.template, (str, type(None))):
            raise TaskError(f"template is a str.format string, got {type(self.template).__name__}")
        if not self.rows:
            raise TaskError(f"task {self.task_name!r} has no rows")
        columns = template_columns(self.prompt_template, self.fields)
        if not 0 <= self.n_shots < len(self.rows):
            raise TaskError(f"n_shots must be in [0, {len(self.rows)}), got {self.n_shots}")
        for i, row in enumerate(self.rows):  # every row now, not mid-evaluation
            check_row(row, self._at(i), self.fields, columns)
            self._answer(row, i)
            if not self._render(row, i).strip():
                raise TaskError(f"{self._at(i)}: the template {self.prompt_template!r} renders an empty prompt")

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

    @property
    def prompt_template(self) -> str:
        """The template in use: ``template``, or :func:`default_template` when it is ``None``."""
        if self.template is not None:
            return self.template
        return default_template(self.format, "context" in self.fields, self.chat)

    @property
    def plain_template(self) -> str | None:
        """What a model without a chat template reads under ``chat`` with the default template: the
        prompt with its ``Answer:`` cue (the chat default leaves it to the assistant's turn); else ``None``.

        >>> rows = [{"q": "Is Lima in Peru?", "a": True}]
        >>> RecordTask.from_records(rows, fields={"question": "q", "answer": "a"}, format="yesno", chat=True).plain_template
        '{question} Answer Yes or No.\\nAnswer:'
        >>> RecordTask.from_records(rows, fields={"question": "q", "answer": "a"}, format="yesno").plain_template is None
        True
        """
        plain = default_template(self.format, "context" in self.fields)
        return plain if self.chat and self.template is None and plain != self.prompt_template else None

    def config(self) -> dict:
        """Name, mapping, format, template, chat and a hash of the rows (what a result depends on), JSON.

        >>> RecordTask.from_records([{"q": "1 + 1 =", "a": 2}], fields={"question": "q", "answer": "a"}).config()
        {'name': 'custom', 'source': 'records', 'fields': {'question': 'q', 'answer': 'a'}, 'format': 'exact', 'template': '{question}', 'chat': False, 'kind': 'contextual', 'n_shots': 0, 'rows': 1, 'rows_sha256': '8f240febb38d30bb'}
        """
        blob = json.dumps(list(self.rows), sort_keys=True, default=str).encode()
        return {"name": self.task_name, "source": self.source, "fields": dict(self.fields), "format": self.format,
                "template": self.prompt_template, "chat": self.chat, "kind": self.task_kind, "n_shots": self.n_shots,
                "rows": len(self.rows), "rows_sha256": hashlib.sha256(blob).hexdigest()[:16],
                **({"plain_template": self.plain_template} if self.plain_template else {})}

    def first_prompt(self, seed: int = 0) -> str:
        """The prompt of the first example ``examples(n, seed)`` gives, for any ``n``: what the model
        reads (under ``chat``, the text of the user turn).

        >>> rows = [{"country": c, "capital": k} for c, k in [("Peru", "Lima"), ("Chile", "Santiago")]]
        >>> task = RecordTask.from_records(rows, fields={"question": "country", "answer": "capital"},
        ...                                template="Q: What is the capital of {question}?\\nA:")
        >>> print(task.first_prompt())
        Q: What is the capital of Chile?
        A:
        """
        return self.examples(1, seed)[0].prompt

    def source_ids(self) -> dict[int, str]:
        """Your id of each example by ``uid``: the ``id`` column's value as written, else the row's
        place in its source.

        >>> rows = [{"k": "q-17", "q": "2 + 2 =", "a": "4"}, {"k": "q-18", "q": "3 + 3 =", "a": "6"}]
        >>> task = RecordTask.from_records(rows, fields={"id": "k", "question": "q", "answer": "a"})
        >>> sorted(task.source_ids().values())
        ['q-17', 'q-18']
        >>> RecordTask.from_records(rows, fields={"question": "q", "answer": "a"}).source_ids()[1]
        'records, record 1 (0-based index)'
        """
        return {self._uid(row, i): str(row[self.fields["id"]]) if "id" in self.fields else self._at(i)
                for i, row in enumerate(self.rows)}

    # ----------------------------------------------------------------- examples
    def _at(self, i: int) -> str:
        """Where row ``i`` is, for errors (see :mod:`massmech.causal.tasks.records`)."""
        return (self.origin or Origin(self.source, "record", note="0-based index")).at(i)

    def _answer(self, row: Mapping, i: int) -> tuple[str, tuple[str, ...], int]:
        """(exact answer, options, label) of a row."""
        raw = row[self.fields["answer"]]
        if self.format == "exact":
            return " " + str(raw).strip(), (), -1
        if self.format == "number":
            found = _NUMBER.findall(str(raw))
            if not found:
                raise TaskError(f"{self._at(i)}: no number in the answer {str(raw)[:60]!r} (format 'number')")
            return " " + found[-1].replace(",", ""), (), -1
        if self.format == "yesno":
            text = str(raw).strip().lower()
            if text not in _TRUE | _FALSE:
                raise TaskError(f"{self._at(i)}: the answer {raw!r} is not a boolean (true/false, yes/no, 1/0)")
            return "", (" Yes", " No"), 0 if text in _TRUE else 1
        choices = list(row[self.fields["choices"]])
        if not 2 <= len(choices) <= 26:
            raise TaskError(f"{self._at(i)}: {len(choices)} choices; need 2 to 26")
        letters = [chr(65 + j) for j in range(len(choices))]
        text = str(raw).strip()
        if text in letters:
            label = letters.index(text)
        elif text.isdigit() and int(text) < len(choices):
            label = int(text)
        elif text in [str(c).strip() for c in choices]:
            label = [str(c).strip() for c in choices].index(text)
        else:
            raise TaskError(f"{self._at(i)}: the answer {text!r} is neither a letter, an index nor one of the choices")
        return "", tuple(" " + x for x in letters), label

    def _render(self, row: Mapping, i: int, template: str | None = None) -> str:
        """The row's prompt: the template (default: the task's) filled in, leading blank lines dropped."""
        values, template = {}, template or self.prompt_template
        for name in [n for _, n, _, _ in string.Formatter().parse(template) if n]:
            column = self.fields[name] if name in MAPPED and name in self.fields else name
            value = row[column]
            if column == self.fields.get("choices"):
                values[name] = "\n".join(f"{chr(65 + j)}. {str(c).strip()}" for j, c in enumerate(value))
            else:
                values[name] = "" if blank(value) else str(value).strip()
        try:
            return template.format_map(values).lstrip("\n")
        except (KeyError, ValueError, IndexError, TypeError) as err:
            raise TaskError(f"{self._at(i)}: the template {template!r} does not render "
                            f"({err.__class__.__name__}: {err})") from None

    def _solved(self, row: Mapping, i: int, template: str | None = None) -> str:
        answer, options, label = self._answer(row, i)
        return self._render(row, i, template) + (answer if not options else options[label])

    def _pool(self, seed: int) -> list[Example]:
        import random

        ids = [self._uid(row, i) for i, row in enumerate(self.rows)]
        shots = sorted(random.Random(f"shots/{seed}").sample(range(len(self.rows)), self.n_shots))
        out, plain = [], self.plain_template
        head = "".join(self._solved(self.rows[i], i) + "\n\n" for i in shots)
        plain_head = "".join(self._solved(self.rows[i], i, plain) + "\n\n" for i in shots) if plain else ""
        for i, row in enumerate(self.rows):
            if i in shots:
                continue
            answer, options, label = self._answer(row, i)
            out.append(Example(uid=ids[i], prompt=head + self._render(row, i), answer=answer, options=options,
                               label=label, group="" if label < 0 else options[label].strip(), chat=self.chat,
                               plain=plain_head + self._render(row, i, plain) if plain else ""))
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
                     template: str | None = None, chat: bool = False, name: str = "custom",
                     kind: str = "contextual", n_shots: int = 0, source: str = "records",
                     origin: Origin | None = None) -> RecordTask:
        """A task from a list of dicts (see the module docstring); ``origin`` names the rows in
        errors (default ``records, record N (0-based index)``).

        >>> rows = [{"q": f"{i} + {i} =", "a": f"The sum is {2 * i}."} for i in range(5)]
        >>> task = RecordTask.from_records(rows, fields={"question": "q", "answer": "a"}, format="number", n_shots=1,
        ...                                template="Question: {question}\\nAnswer:")
        >>> print(task.examples(1, seed=0)[0].prompt)  # one solved row first, as a demonstration
        Question: 1 + 1 =
        Answer: 2
        <BLANKLINE>
        Question: 4 + 4 =
        Answer:
        """
        rows = tuple(records)
        where = origin or Origin(source, "record", note="0-based index")
        for i, row in enumerate(rows):
            if not isinstance(row, Mapping):
                raise TaskError(f"{where.at(i)}: a record is a dict of fields, not a {type(row).__name__}")
        return cls(rows=tuple(dict(r) for r in rows), fields=dict(fields), format=format, task_name=name,
                   task_kind=kind, n_shots=n_shots, source=source, template=template, chat=chat, origin=where)

    @classmethod
    def from_file(cls, path: str | os.PathLike, **kwargs: Any) -> RecordTask:
        """A task from a ``.jsonl``, ``.json`` (a list of objects), ``.csv`` or ``.parquet`` file;
        ``kwargs`` as :meth:`from_records` (``fields``, ``format``, ``template``, ``chat`` ...).
        Errors name the file and the line (JSONL) or row (see :mod:`massmech.causal.tasks.records`).

        >>> import json, tempfile
        >>> path = Path(tempfile.mkdtemp()) / "facts.jsonl"
        >>> _ = path.write_text("\\n".join(json.dumps({"q": f"Is {i} even?", "a": i % 2 == 0}) for i in range(6)))
        >>> task = RecordTask.from_file(path, fields={"question": "q", "answer": "a"}, format="yesno")
        >>> task.name, task.scoring, sorted(ex.group for ex in task.examples(6))
        ('facts', 'choice', ['No', 'No', 'No', 'Yes', 'Yes', 'Yes'])
        """
        rows, origin = read_rows(path)
        kwargs.setdefault("name", Path(path).stem)
        return cls.from_records(rows, source=str(path), origin=origin, **kwargs)

    @classmethod
    def from_dataset(cls, dataset: Any, *, split: str | None = None, **kwargs: Any) -> RecordTask:
        """A task from a ``datasets.Dataset`` (or ``DatasetDict`` with ``split``), a
        ``save_to_disk`` folder or a hub id (which needs a network; offline it fails with a
        clear message); ``kwargs`` as :meth:`from_records`.

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
        source = f"dataset {kwargs['name']}"
        return cls.from_records(dataset.to_list(), source=source, origin=Origin(source, "row", note="0-based index"), **kwargs)


def _flag(key: str, value: str) -> bool:
    if value.lower() in _TRUE | _FALSE:
        return value.lower() in _TRUE
    raise TaskError(f"file task option {key}={value!r} is not a boolean (true/false, yes/no, 1/0)")


def task_from_string(spec: str, **params: Any) -> RecordTask:
    """``"file:PATH#question=q&answer=a&format=yesno"`` -> the task (see :func:`massmech.causal.tasks.builtin.get_task`).

    Options besides the fields: ``format``, ``kind``, ``name``, ``n_shots``, ``chat`` (true/false)
    and ``template``, which is percent-decoded and kept as written otherwise: write ``%26`` for
    ``&``, ``%0A`` for a newline, ``%25`` for ``%`` (``template=Q: {question}%0AA:``).

    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "capitals.csv"
    >>> _ = path.write_text("country,capital\\nPeru,Lima\\nChile,Santiago\\n")
    >>> task = task_from_string(f"file:{path}#question=country&answer=capital&template=Q: {{question}}%0AA:")
    >>> task.first_prompt()
    'Q: Chile\\nA:'
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
        key, sep, raw = item.partition("=")
        if not sep:
            raise TaskError(f"file task option {item!r} is not NAME=VALUE (a template writes & as %26)")
        key, value = key.strip(), raw.strip()
        if key in ("format", "kind", "name"):
            kw[key] = value
        elif key == "n_shots":
            if not value.isdigit():
                raise TaskError(f"file task option n_shots={value!r} is not a whole number")
            kw[key] = int(value)
        elif key == "chat":
            kw[key] = _flag(key, value)
        elif key == "template":
            kw[key] = unquote(raw)
        else:
            fields[key] = value
    return RecordTask.from_file(path, fields=fields, **(kw | params))


def task_from_spec(path: str, fields: Sequence[str], *, format: str = "exact", kind: str = "contextual",
                   n_shots: int = 0, template: str | None = None, chat: bool = False) -> RecordTask:
    """The CLI's ``--task-file PATH --field question=q --field answer=a --format F``.

    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "capitals.csv"
    >>> _ = path.write_text("country,capital\\nPeru,Lima\\nChile,Santiago\\n")
    >>> task = task_from_spec(str(path), ["question=country", "answer=capital"], template="The capital of {question} is")
    >>> task.name, task.format, task.first_prompt(), task.examples(1)[0].answer
    ('capitals', 'exact', 'The capital of Chile is', ' Santiago')
    """
    mapping = {}
    for item in fields:
        key, sep, column = item.partition("=")
        if not sep:
            raise TaskError(f"--field takes NAME=COLUMN, got {item!r}")
        mapping[key.strip()] = column.strip()
    return RecordTask.from_file(path, fields=mapping, format=format, kind=kind, n_shots=n_shots, template=template, chat=chat)
