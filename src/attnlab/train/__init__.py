"""The training loop."""

from attnlab.train.config import TrainConfig
from attnlab.train.loop import TrainResult, evaluate, train

__all__ = ["TrainConfig", "TrainResult", "evaluate", "train"]
