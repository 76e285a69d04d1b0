"""The training loop: ``train`` builds a model and a task from their configs and runs ``fit``, the loop itself."""

from attnlab.train.config import TrainConfig
from attnlab.train.loop import TrainResult, evaluate, fit, train

__all__ = ["TrainConfig", "TrainResult", "evaluate", "fit", "train"]
