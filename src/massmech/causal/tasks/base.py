"""The task protocol: a :class:`Task` turns ``(n, seed)`` into :class:`Example` s.

An example is a prompt plus either a gold ``answer`` continuation (``scoring="exact"``: greedy
exact match, decided in one teacher-forced pass, see :mod:`massmech.causal.evaluate`) or answer
``options`` with the gold ``label`` (``scoring="choice"``: highest summed log-probability).
Examples are deterministic in ``seed``; classification tasks draw the same number of examples
per label. The offline suite is :mod:`massmech.causal.tasks.builtin`.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import ClassVar

from massmech.errors import TaskError


@dataclass(frozen=True)
class Example:
    """One evaluation item.

    Attributes:
        uid: Stable id within the task (seeds per-example randomness such as random controls).
        prompt: Text the model reads.
        answer: Gold continuation for exact match (starts with the separating space).
        options: Answer options for multiple choice (each starts with its space).
        label: Index of the gold option (multiple choice), or -1.
        group: Label used for balancing and reporting (class, continent, needle depth ...).
        chat: Ask the prompt as a user turn of the model's chat template when it has one (the
            answer or option then follows the assistant header, without its leading space).
        plain: With ``chat``, what a model without a chat template reads instead of ``prompt``
            (e.g. the question with an ``Answer:`` cue); empty: ``prompt``.

    >>> Example(uid=0, prompt="The capital of France is", answer=" Paris")
    Example(uid=0, prompt='The capital of France is', answer=' Paris', options=(), label=-1, group='', chat=False, plain='')
    """

    uid: int
    prompt: str
    answer: str = ""
    options: tuple[str, ...] = ()
    label: int = -1
    group: str = ""
    chat: bool = False
    plain: str = ""


@dataclass(frozen=True)
class Task:
    """Base of every task: ``examples(n, seed)`` -> list of :class:`Example`.

    A subclass sets ``name``, ``kind``, ``scoring`` (and ``balanced``) and implements
    ``_pool(seed)``, the full candidate pool; parameters are dataclass fields.

    >>> from massmech.causal.tasks.builtin import KVLookup
    >>> task = KVLookup(n_pairs=2)
    >>> task.name, task.kind, task.scoring, task.max_n(), task.config()
    ('kv_lookup', 'contextual', 'exact', 1000, {'name': 'kv_lookup', 'n_pairs': 2, 'pool_size': 1000})
    """

    name: ClassVar[str] = ""
    kind: ClassVar[str] = ""  # "parametric" | "contextual"
    scoring: ClassVar[str] = ""  # "exact" | "choice"
    balanced: ClassVar[bool] = False  # draw the same number of examples per group
    n_shots: ClassVar[int] = 3  # demonstrations in the prompt, for the tasks that give some
    pool_distractors: ClassVar[int] = 0  # rank scorer: wrong answers drawn from the task's own answers

    def examples(self, n: int, seed: int = 0) -> list[Example]:
        """``n`` examples, deterministic in ``seed``.

        Raises:
            TaskError: ``n`` < 1 or larger than the data allows (the message gives the maximum).

        >>> from massmech.causal.tasks.builtin import KVLookup
        >>> ex = KVLookup(n_pairs=2).examples(2, seed=0)[1]
        >>> print(ex.prompt + ex.answer)
        Remember the number of each word.
        castle: 649
        winter: 144
        The number of winter is 144
        """
        if n < 1:
            raise TaskError(f"n must be >= 1, got {n}")
        pool = self._pool(seed)
        if n > self.max_n(pool):
            raise TaskError(
                f"task {self.name!r} has data for at most {self.max_n(pool)} examples"
                + (" with balanced groups" if self.balanced else "")
                + f"; asked for n={n}"
            )
        return self._draw(pool, n, seed)

    @staticmethod
    def from_records(records, **kwargs):  # noqa: ANN001, ANN205 - see RecordTask.from_records
        """Your own task from a list of dicts: :meth:`massmech.causal.tasks.custom.RecordTask.from_records`.

        >>> rows = [{"q": "Is 2 even?", "a": "yes"}, {"q": "Is 3 even?", "a": "no"}]
        >>> task = Task.from_records(rows, fields={"question": "q", "answer": "a"}, format="yesno")
        >>> task.scoring, task.examples(1)[0].prompt, task.examples(1)[0].options
        ('choice', 'Is 3 even? Answer Yes or No.\\nAnswer:', (' Yes', ' No'))
        """
        from massmech.causal.tasks.custom import RecordTask

        return RecordTask.from_records(records, **kwargs)

    @staticmethod
    def from_file(path, **kwargs):  # noqa: ANN001, ANN205
        """Your own task from a JSON/JSONL/CSV/parquet file: :meth:`~massmech.causal.tasks.custom.RecordTask.from_file`.

        >>> import pathlib, tempfile
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "facts.csv"
        >>> _ = path.write_text("q,a\\nThe capital of Peru is,Lima\\nThe capital of Chile is,Santiago\\n")
        >>> task = Task.from_file(path, fields={"question": "q", "answer": "a"})
        >>> task.name, task.max_n(), task.examples(1)[0].answer
        ('facts', 2, ' Santiago')
        """
        from massmech.causal.tasks.custom import RecordTask

        return RecordTask.from_file(path, **kwargs)

    @staticmethod
    def from_dataset(dataset, **kwargs):  # noqa: ANN001, ANN205
        """Your own task from ``datasets``: :meth:`~massmech.causal.tasks.custom.RecordTask.from_dataset`.

        >>> import datasets
        >>> ds = datasets.Dataset.from_list([{"q": "2 + 2 =", "a": "#### 4"}, {"q": "3 + 3 =", "a": "#### 6"}])
        >>> task = Task.from_dataset(ds, fields={"question": "q", "answer": "a"}, format="number", name="add")
        >>> [ex.answer for ex in task.examples(2)]
        [' 6', ' 4']
        """
        from massmech.causal.tasks.custom import RecordTask

        return RecordTask.from_dataset(dataset, **kwargs)

    def chance(self, n: int, seed: int = 0, *, scorer: str | None = None) -> float:
        """Accuracy of guessing on ``examples(n, seed)``: mean ``1 / options`` for multiple choice
        (and for an exact task under the ``rank`` scorer: ``1 / (1 + distractors)``), else 0 (report
        ``(accuracy - chance) / (1 - chance)`` beside accuracy).

        >>> from massmech.causal.tasks.builtin import get_task
        >>> round(get_task("country_continent").chance(12), 4), get_task("passkey").chance(5)
        (0.1667, 0.0)
        >>> get_task("kv_lookup").chance(4, scorer="rank")  # the gold value against the 7 others
        0.125
        """
        examples = self.examples(n, seed)
        if self.scoring == "choice":
            return sum(1 / len(e.options) for e in examples) / len(examples)
        if scorer == "rank":
            return sum(1 / (1 + len(self.distractors(e))) for e in examples) / len(examples)
        return 0.0

    def distractors(self, example: Example) -> tuple[str, ...]:
        """The wrong answers the ``rank`` scorer ranks ``example``'s gold answer against (each with
        its leading space, none equal to the gold answer). A task with exact answers that has
        natural distractors in its prompt overrides this (``kv_lookup``: the other values;
        ``knowledge_conflict``: the memorised capital). A task with ``pool_distractors = k``
        (the parametric ones: k = 4) draws k other answers of its own pool, seeded by the
        example's uid and answer (so a task and its zero-shot variant rank against the same ones).

        Raises:
            TaskError: The task has none (e.g. ``passkey``: its prompt holds one number).

        >>> from massmech.causal.tasks.builtin import get_task
        >>> ex = get_task("knowledge_conflict").examples(1)[0]
        >>> ex.answer, get_task("knowledge_conflict").distractors(ex)
        (' Amsterdam', (' Oslo',))
        """
        if self.pool_distractors:
            others = [a for a in _answers(self) if a != example.answer]
            rng = random.Random(f"distractors/{example.uid}/{example.answer}")
            return tuple(rng.sample(others, min(self.pool_distractors, len(others))))
        raise TaskError(
            f"task {self.name!r} has no distractors for the rank scorer (its prompt offers no wrong "
            "answers to rank the gold one against): score it with --scorer strict, contains or first-line"
        )

    def max_n(self, pool: list[Example] | None = None) -> int:
        """The largest ``n`` :meth:`examples` accepts (balanced tasks: equal counts per group).

        >>> from massmech.causal.tasks.builtin import get_task
        >>> get_task("country_continent").max_n(), get_task("nba_team_city").max_n()
        (78, 27)
        """
        pool = self._pool(0) if pool is None else pool
        if not self.balanced:
            return len(pool)
        groups = _by_group(pool)
        return min(len(v) for v in groups.values()) * len(groups)

    def config(self) -> dict:
        """Task name and parameters (JSON).

        >>> from massmech.causal.tasks.builtin import get_task
        >>> get_task("passkey", filler_repeats=2).config()
        {'name': 'passkey', 'filler_repeats': 2, 'depths': (0.0, 0.25, 0.5, 0.75, 1.0), 'pool_size': 1000}
        """
        return {"name": self.name, **asdict(self)}

    def source_ids(self) -> dict[int, str]:
        """Each example's own id where it came from, by ``uid`` (your row's id or its place in the
        file, for tasks from your data); empty for built-in tasks, whose ``uid`` is their id.

        >>> from massmech.causal.tasks.builtin import get_task
        >>> get_task("kv_lookup").source_ids()
        {}
        """
        return {}

    # subclasses: the full candidate pool (deterministic in seed for synthetic tasks)
    def _pool(self, seed: int) -> list[Example]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _draw(self, pool: list[Example], n: int, seed: int) -> list[Example]:
        rng = random.Random(seed)
        if self.balanced:  # same count per group (label, depth, slot), then shuffled
            groups = _by_group(pool)
            per, extra = divmod(n, len(groups))
            out: list[Example] = []
            for i, g in enumerate(sorted(groups)):
                out += rng.sample(groups[g], per + (i < extra))
            rng.shuffle(out)
            return out
        return rng.sample(pool, n)


def _by_group(pool: Sequence[Example]) -> dict[str, list[Example]]:
    groups: dict[str, list[Example]] = {}
    for ex in pool:
        groups.setdefault(ex.group, []).append(ex)
    return groups


@functools.lru_cache(maxsize=16)
def _answers(task: Task) -> tuple[str, ...]:
    """The distinct gold answers of a task's pool, sorted (the pool of its drawn distractors)."""
    return tuple(sorted({e.answer for e in task._pool(0)}))
