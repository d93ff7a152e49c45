"""Reading and checking the rows of your own task, with errors that say where a bad row is.

:func:`read_rows` reads a ``.jsonl``, ``.json``, ``.csv`` or ``.parquet`` file into rows and an
:class:`Origin`, which names every row in one wording (:func:`location`):

==================  ==========================================  ==================================
source              a row is named                              example
==================  ==========================================  ==================================
``.jsonl``          by its line in the file (1-based)           ``facts.jsonl, line 3``
``.json``           by its item in the list (1-based)           ``facts.json, item 3 (1-based)``
``.csv/.parquet``   by its row, the header excluded (1-based)   ``facts.csv, row 3 (1-based, header excluded)``
records             by its index in the list (0-based)          ``records, record 2 (0-based index)``
``datasets``        by its index in the dataset (0-based)       ``dataset squad, row 2 (0-based index)``
==================  ==========================================  ==================================

:func:`check_row` refuses, before any compute, a row without a mapped column and a row whose
question or answer is null, NaN or empty.

>>> import tempfile
>>> path = Path(tempfile.mkdtemp()) / "facts.jsonl"
>>> _ = path.write_text('{"q": "The capital of Peru is", "a": "Lima"}\\n\\n{"q": "The capital of Chile is",}\\n')
>>> try:
...     read_rows(path)
... except TaskError as err:
...     print(str(err).split("/")[-1])
facts.jsonl, line 3: not valid JSON (Expecting property name enclosed in double quotes, column 33): fix or remove the line
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from massmech.errors import TaskError

SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")


def location(source: str, unit: str, number: int, note: str = "") -> str:
    """The one wording of a row's place in every task error: ``SOURCE, UNIT NUMBER[ (NOTE)]``.

    >>> location("facts.csv", "row", 3, "1-based, header excluded")
    'facts.csv, row 3 (1-based, header excluded)'
    """
    return f"{source}, {unit} {number}" + (f" ({note})" if note else "")


@dataclass(frozen=True)
class Origin:
    """Where a task's rows came from: ``at(i)`` names row ``i`` (0-based position in the rows).

    Attributes:
        source: The file path, ``records`` or ``dataset NAME``.
        unit: What a row is called there (``line``, ``row``, ``item``, ``record``).
        numbers: The number of each row as its source counts it (a JSONL row's line in the file);
            empty: the position plus ``start``.
        start: The number of the first row when ``numbers`` is empty (0 or 1).
        note: How the number counts (``0-based index`` ...), shown after it.

    >>> Origin("records", "record", note="0-based index").at(2)
    'records, record 2 (0-based index)'
    >>> Origin("facts.jsonl", "line", numbers=(1, 3)).at(1)
    'facts.jsonl, line 3'
    """

    source: str
    unit: str = "record"
    numbers: tuple[int, ...] = ()
    start: int = 0
    note: str = ""

    def at(self, i: int) -> str:
        """The location of row ``i`` (see :func:`location`)."""
        number = self.numbers[i] if self.numbers else i + self.start
        return location(self.source, self.unit, number, self.note)


def read_rows(path: str | os.PathLike) -> tuple[list[dict], Origin]:
    """The rows of a task file and their :class:`Origin`.

    Raises:
        TaskError: No such file, another suffix, or a file that does not parse (the message
            names the file and the line or row).

    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "capitals.csv"
    >>> _ = path.write_text("country,capital\\nPeru,Lima\\nChile,Santiago\\n")
    >>> rows, origin = read_rows(path)
    >>> rows[1], origin.at(1).split("/")[-1]
    ({'country': 'Chile', 'capital': 'Santiago'}, 'capitals.csv, row 2 (1-based, header excluded)')
    """
    path = Path(path)
    if not path.is_file():
        raise TaskError(f"no task file {path}")
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise TaskError(f"{path}: task files are .jsonl, .json, .csv or .parquet")
    if suffix in (".csv", ".parquet"):
        return _read_table(path, suffix)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise TaskError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start}); save it as UTF-8") from err
    return _read_jsonl(path, text) if suffix == ".jsonl" else _read_json(path, text)


def _read_jsonl(path: Path, text: str) -> tuple[list[dict], Origin]:
    rows, numbers = [], []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = location(str(path), "line", number)
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise TaskError(f"{where}: not valid JSON ({err.msg}, column {err.colno}): fix or remove the line") from None
        if not isinstance(row, dict):
            raise TaskError(f"{where}: a JSONL line holds one JSON object ({{...}}), not a {type(row).__name__}")
        rows.append(row)
        numbers.append(number)
    return rows, Origin(str(path), "line", tuple(numbers))


def _read_json(path: Path, text: str) -> tuple[list[dict], Origin]:
    try:
        rows = json.loads(text)
    except json.JSONDecodeError as err:
        where = location(str(path), "line", err.lineno)
        raise TaskError(f"{where}: not valid JSON ({err.msg}, column {err.colno})") from None
    if not isinstance(rows, list):
        raise TaskError(f"{path}: a .json task file holds a list of objects, not a {type(rows).__name__}")
    origin = Origin(str(path), "item", start=1, note="1-based")
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise TaskError(f"{origin.at(i)}: the list holds JSON objects ({{...}}), not a {type(row).__name__}")
    return rows, origin


def _read_table(path: Path, suffix: str) -> tuple[list[dict], Origin]:
    import pandas as pd

    try:
        frame = pd.read_csv(path) if suffix == ".csv" else pd.read_parquet(path)
    except Exception as err:  # noqa: BLE001 - every reader failure gets the file named
        raise TaskError(f"{path}: could not read it as {suffix[1:]} ({err.__class__.__name__}: {str(err)[:160]})") from err
    return frame.to_dict(orient="records"), Origin(str(path), "row", start=1, note="1-based, header excluded")


def blank(value: Any) -> str:
    """Why a field's value is no value (``"null"``, ``"NaN"``, ``"empty"``), or ``""`` when it is one.

    >>> blank(None), blank(float("nan")), blank("  "), blank(0), blank(False), blank(["a"])
    ('null', 'NaN', 'empty', '', '', '')
    """
    if value is None:
        return "null"
    if isinstance(value, str):
        return "" if value.strip() else "empty"
    if isinstance(value, (bool, int)):
        return ""
    if hasattr(value, "__len__"):  # a list, or a parquet column's array
        return "" if len(value) else "empty"
    try:
        return "NaN" if value != value else ""
    except (TypeError, ValueError):  # pandas' NA refuses a truth value
        return "null"


def check_row(row: Mapping, where: str, fields: Mapping[str, str], columns: Sequence[str] = ()) -> None:
    """Refuse a row that lacks a mapped column (or a template's ``columns``), or whose question,
    answer, choices or id is null, NaN or empty; ``where`` names the row (:meth:`Origin.at`).

    >>> check_row({"q": "The capital of Peru is", "a": None}, "facts.jsonl, line 2", {"question": "q", "answer": "a"})
    Traceback (most recent call last):
    ...
    massmech.errors.TaskError: facts.jsonl, line 2: the answer (field 'a') is null: give every row an answer, or drop the row
    """
    for name, column in fields.items():
        if column not in row:
            raise TaskError(f"{where}: no field {column!r} (mapped as {name}={column!r}; the row has "
                            f"{sorted(map(str, row))}): fix the mapping or the row")
        why = blank(row[column])
        if why and name != "context":  # a row may have no context
            raise TaskError(f"{where}: the {name} (field {column!r}) is {why}: give every row "
                            f"{'an' if name[0] in 'aeiou' else 'a'} {name}, or drop the row")
    for column in columns:
        if column not in row:
            raise TaskError(f"{where}: no field {column!r} (named by the template; the row has "
                            f"{sorted(map(str, row))}): fix the template or the row")
    if "choices" in fields:
        choices = row[fields["choices"]]
        if isinstance(choices, (str, bytes)) or not hasattr(choices, "__len__"):
            raise TaskError(f"{where}: the choices (field {fields['choices']!r}) are a {type(choices).__name__}, not a "
                            "list (a CSV cell cannot hold a list: use JSONL, JSON or parquet)")


def _hub_reachable(name: str) -> None:
    """Raise ``ConnectionError`` at once when the Hugging Face hub cannot be reached (offline env
    flags, or no connection), before ``datasets`` retries."""
    import socket

    if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1":
        raise ConnectionError("HF_HUB_OFFLINE / HF_DATASETS_OFFLINE is set")
    try:
        socket.create_connection(("huggingface.co", 443), timeout=3).close()
    except OSError as err:
        raise ConnectionError(f"the hub is not reachable for {name!r} ({err})") from err
