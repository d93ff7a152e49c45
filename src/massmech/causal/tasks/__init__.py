"""Tasks: the :class:`Task`/:class:`Example` base (:mod:`.base`), the offline suite (:mod:`.builtin`)
and its zero-shot parametric variants (:mod:`.zeroshot`)."""

from massmech.causal.tasks.base import Example, Task
from massmech.causal.tasks.builtin import CONTEXTUAL, PARAMETRIC, TASKS, get_task
from massmech.causal.tasks.zeroshot import ZERO_SHOT_TASKS

TASKS.update(ZERO_SHOT_TASKS)  # registered here: they subclass built-in tasks

__all__ = ["CONTEXTUAL", "PARAMETRIC", "TASKS", "Example", "Task", "get_task"]
