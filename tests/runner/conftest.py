"""Tiny sweeps for the runner tests: one layer, d_model 16, MQAR with vocabulary 16 and length 16."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from attnlab.runner.config import Sweep
from attnlab.train.config import TrainConfig


@pytest.fixture(scope="session")
def tiny_task() -> dict[str, Any]:
    return {"name": "mqar", "vocab": 16, "length": 16, "num_kv_pairs": 2}


@pytest.fixture(scope="session")
def make_sweep(tiny_task: dict[str, Any]) -> Callable[..., Sweep]:
    """``make_sweep(lrs=[...])``: two learning rates × two seeds = four runs of 20 steps, unless overridden."""

    def make(**overrides: Any) -> Sweep:
        fields: dict[str, Any] = {
            "name": "tiny",
            "tasks": [tiny_task],
            "mechanisms": [{"normaliser": "softmax"}],
            "widths": [16],
            "lrs": [1e-3, 3e-3],
            "seeds": [0, 1],
            "model": {"n_layers": 1, "n_heads": 2},
            "train": TrainConfig(steps=20, batch_size=16, eval_every=10, eval_examples=64),
        }
        return Sweep(**{**fields, **overrides})

    return make
