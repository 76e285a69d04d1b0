"""Tasks, one file each; importing this package registers them all."""

from attnlab.tasks import mqar
from attnlab.tasks.base import IGNORE, TASKS, Batch, Task, TaskConfig, task_from_dict

__all__ = ["IGNORE", "TASKS", "Batch", "Task", "TaskConfig", "mqar", "task_from_dict"]
