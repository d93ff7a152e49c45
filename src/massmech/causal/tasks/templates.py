"""Prompt templates of tasks defined by rows: the defaults per answer format, and the columns a
template names (see :mod:`massmech.causal.tasks.custom`)."""

from __future__ import annotations

import string
from collections.abc import Mapping

from massmech.errors import TaskError

FORMATS = ("exact", "choice", "yesno", "number")
MAPPED = ("question", "context", "choices")  # template names that mean the mapped fields
_BODY = {"exact": "{question}", "number": "{question}", "choice": "{question}\n{choices}",
         "yesno": "{question} Answer Yes or No."}
_CUE = {"choice": "\nAnswer:", "yesno": "\nAnswer:"}


def default_template(format: str, context: bool = False, chat: bool = False) -> str:
    """The prompt template a :class:`RecordTask` uses when it is given none.

    ``exact`` and ``number``: the question as written. ``choice``: the question, the lettered
    options, ``Answer:``. ``yesno``: the question, `` Answer Yes or No.``, ``Answer:``. With a
    mapped ``context`` it comes first, on its own line; under ``chat`` the final ``Answer:`` cue
    is left out (the assistant's turn is the cue).

    >>> default_template("exact"), default_template("exact", context=True)
    ('{question}', '{context}\\n{question}')
    >>> default_template("yesno"), default_template("yesno", chat=True)
    ('{question} Answer Yes or No.\\nAnswer:', '{question} Answer Yes or No.')
    >>> default_template("choice")
    '{question}\\n{choices}\\nAnswer:'
    """
    if format not in FORMATS:
        raise TaskError(f"format must be one of {FORMATS}, got {format!r}")
    return ("{context}\n" if context else "") + _BODY[format] + ("" if chat else _CUE.get(format, ""))


def template_columns(template: str, fields: Mapping[str, str]) -> tuple[str, ...]:
    """The row columns a template names besides the mapped ``{question}``, ``{context}``, ``{choices}``.

    Raises:
        TaskError: Unbalanced braces, a positional ``{}``, attribute or index access, or the answer.

    >>> template_columns("{topic}: {question}", {"question": "q", "answer": "a"})
    ('topic',)
    >>> template_columns("{question} {a}", {"question": "q", "answer": "a"})
    Traceback (most recent call last):
    ...
    massmech.errors.TaskError: template '{question} {a}' shows the answer ({a}); a prompt holds what the model reads before it answers
    """
    try:
        names = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as err:
        raise TaskError(f"template {template!r}: {err}; write {{{{ and }}}} for a literal brace") from None
    columns = []
    for name in names:
        if not name or name.isdigit() or any(c in name for c in ".[]"):
            raise TaskError(f"template {template!r}: {{{name}}} is not a field name; name {{question}}, "
                            "{context}, {choices} or a column, with no positional {} or attribute/index access")
        if name in ("answer", fields.get("answer")):
            raise TaskError(f"template {template!r} shows the answer ({{{name}}}); a prompt holds what the model "
                            "reads before it answers")
        if not (name in MAPPED and name in fields) and name not in columns:
            columns.append(name)
    return tuple(columns)
