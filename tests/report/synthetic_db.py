"""Synthetic results databases for the report and export tests, written through ``Store``'s public API.

(A module of its own, not conftest.py, so tests can import it: several folders have a conftest.py.)

No model is trained: each run gets made-up final metrics from ``synthetic_final`` (a pure function of its axes,
so a test can recompute what the report should show) and short made-up curves.
"""

from __future__ import annotations

from attnlab.runner.config import RunConfig
from attnlab.runner.store import Store

TASK = {"name": "mqar", "vocab": 16, "length": 16, "num_kv_pairs": 2}
MECHANISM_SKILL = {"softmax": 0.6, "sigmoid": 0.3}
FAIL_LR = 1e-2  # runs at this learning rate are recorded as failed


def synthetic_final(run: RunConfig, factors: tuple[float, ...] = ()) -> dict[str, float]:
    """Made-up final metrics of a run: accuracy rises with width and skill, falls with evaluation length."""
    accuracy = MECHANISM_SKILL[run.model.attention.normaliser] + run.model.d_model / 160 + run.seed / 100
    accuracy += 0.05 if run.train.lr == 3e-3 else 0.0
    final = {"accuracy": accuracy, "loss": 2.0 - accuracy, "steps": 20.0 + run.seed}
    for f in factors:
        final[f"accuracy@{f:g}x"] = accuracy / f
        final[f"loss@{f:g}x"] = (2.0 - accuracy) * f
    return final


def synthetic_curves(final: dict[str, float]) -> list[tuple[int, str, float]]:
    """Two evaluations: half-way and at the end."""
    out = []
    for step, share in ((10, 0.5), (20, 1.0)):
        out += [
            (step, "train_loss", final["loss"] / share),
            (step, "eval_loss", final["loss"] / share),
            (step, "eval_accuracy", final["accuracy"] * share),
        ]
    return out


def fill(
    store: Store, runs: list[RunConfig], factors: tuple[float, ...] = (), error: str = "FloatingPointError: nan"
) -> None:
    """Record every run: done with synthetic metrics, or failed with ``error`` when its lr is ``FAIL_LR``."""
    store.enqueue(runs)
    for run in runs:
        store.start(run.run_id)
        if run.train.lr == FAIL_LR:
            store.fail(run.run_id, error)
        else:
            final = synthetic_final(run, factors)
            store.finish(run.run_id, final, synthetic_curves(final))
