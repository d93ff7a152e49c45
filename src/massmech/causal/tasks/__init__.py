"""Tasks: the :class:`Task`/:class:`Example` base (:mod:`.base`) and the offline suite (:mod:`.builtin`)."""

from massmech.causal.tasks.base import Example, Task
from massmech.causal.tasks.builtin import CONTEXTUAL, PARAMETRIC, TASKS, get_task

__all__ = ["CONTEXTUAL", "PARAMETRIC", "TASKS", "Example", "Task", "get_task"]
