"""Tasks, one file each; importing this package registers them all."""

from attnlab.registry_imports import import_submodules
from attnlab.tasks.base import IGNORE, TASKS, Batch, Task, TaskConfig, task_from_dict

MODULES = import_submodules(__name__, __path__)

__all__ = ["IGNORE", "MODULES", "TASKS", "Batch", "Task", "TaskConfig", "task_from_dict"]
