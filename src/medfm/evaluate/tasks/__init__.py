"""Downstream tasks by name; importing this package registers them all in ``TASKS``."""

from medfm.evaluate.tasks import fundus, hippocampus, images, vqa  # noqa: F401  (registers the tasks)
from medfm.evaluate.tasks.base import TASKS, Example, Task, TaskData, TaskInfo, register_task

__all__ = ["TASKS", "Example", "Task", "TaskData", "TaskInfo", "register_task"]
