"""Downstream tasks by name; importing this package registers them all in ``TASKS``."""

from medfm.evaluate.tasks import ecg, fundus, hippocampus, icu, images, vqa  # noqa: F401  (registers them)
from medfm.evaluate.tasks.base import TASKS, Example, Task, TaskData, TaskInfo, register_task

__all__ = ["TASKS", "Example", "Task", "TaskData", "TaskInfo", "register_task"]
