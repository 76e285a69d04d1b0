"""Fixtures of synthetic results databases (see synthetic_db.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from synthetic_db import TASK, fill

from attnlab.runner.config import Sweep
from attnlab.runner.store import Store
from attnlab.train.config import TrainConfig


@pytest.fixture(scope="session")
def sweep_of() -> Callable[..., Sweep]:
    """``sweep_of(widths=[16, 32], ...)``: a small grid on tiny MQAR (never trained here)."""

    def make(**overrides: Any) -> Sweep:
        fields: dict[str, Any] = {
            "name": "synthetic",
            "tasks": [TASK],
            "mechanisms": [{"normaliser": "softmax"}, {"normaliser": "sigmoid"}],
            "widths": [16, 32],
            "lrs": [1e-3, 3e-3],
            "seeds": [0, 1],
            "model": {"n_layers": 1, "n_heads": 2},
            "train": TrainConfig(steps=20, batch_size=8, eval_every=10, eval_examples=16),
        }
        return Sweep(**{**fields, **overrides})

    return make


@pytest.fixture(scope="module")
def make_db(tmp_path_factory: pytest.TempPathFactory, sweep_of: Callable[..., Sweep]) -> Iterator[Callable[..., Store]]:
    """``make_db(db, factors=(2, 4), **sweep fields)``: a filled store ``<db>.sqlite`` in a new folder (closed
    after the module)."""
    stores: list[Store] = []

    def make(db: str = "results", factors: tuple[float, ...] = (), error: str = "", **overrides: Any) -> Store:
        store = Store(tmp_path_factory.mktemp("db") / f"{db}.sqlite")
        stores.append(store)
        fill(store, sweep_of(**overrides).runs(), factors, error or "FloatingPointError: nan\nTraceback: line two")
        return store

    yield make
    for store in stores:
        store.close()
