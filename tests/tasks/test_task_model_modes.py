"""Each task's ``mode`` picks the model a sweep builds for it, and a run whose model does not match is rejected."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import pytest

from attnlab.errors import ConfigError
from attnlab.runner.config import RunConfig, Sweep
from attnlab.tasks import TaskConfig
from attnlab.train.config import TrainConfig

TASKS = [
    {"name": "mqar", "vocab": 16, "length": 16, "num_kv_pairs": 2},
    {"name": "sorting", "vocab": 16, "length": 10},
    {"name": "reversal", "vocab": 16, "length": 8},
]


def sweep(**overrides: Any) -> Sweep:
    fields: dict[str, Any] = {
        "name": "modes",
        "tasks": TASKS,
        "mechanisms": [{"normaliser": "softmax"}, {"normaliser": "sigmoid"}],
        "positions": ["rope", "learned"],
        "widths": [16],
        "model": {"n_layers": 1, "n_heads": 2},
        "train": TrainConfig(steps=2, batch_size=4, eval_every=1, eval_examples=8),
    }
    return Sweep(**{**fields, **overrides})


def test_a_sweep_builds_the_model_each_task_needs() -> None:
    modes = {(run.task.name, run.model.mode) for run in sweep().runs()}
    assert modes == {("mqar", "decoder"), ("sorting", "encoder"), ("reversal", "encoder_decoder")}


def test_a_sweep_with_a_mechanism_without_cross_attention_is_rejected_for_a_reversal_task() -> None:
    with pytest.raises(ConfigError, match=r"attention\.normaliser='retnet': does not support cross-attention"):
        sweep(mechanisms=[{"normaliser": "retnet"}])
    sweep(tasks=TASKS[:2], mechanisms=[{"normaliser": "retnet"}])  # fine without the cross-attention task


@pytest.mark.parametrize(
    ("task", "wrong"),
    [
        (TASKS[0], "encoder"),
        (TASKS[1], "decoder"),
        (TASKS[2], "decoder"),
        (TASKS[2], "encoder"),
        (TASKS[0], "encoder_decoder"),
    ],
)
def test_a_run_whose_model_mode_does_not_match_its_task_is_rejected(task: dict, wrong: str) -> None:
    needed = {"mqar": "decoder", "sorting": "encoder", "reversal": "encoder_decoder"}[task["name"]]
    with pytest.raises(ConfigError, match=rf"model\.mode='{wrong}': task '{task['name']}' needs a {needed} model"):
        RunConfig(task=task, model={"vocab_size": 16, "d_model": 16, "n_heads": 2, "mode": wrong})


def test_a_task_that_only_sets_the_old_causal_flag_gets_the_encoder_mode() -> None:
    class OldStyle(TaskConfig):
        name: Literal["old_style"] = "old_style"
        causal: ClassVar[bool] = False

    assert OldStyle.mode == "encoder"


def test_a_sweep_can_ask_for_extrapolation_on_tasks_that_have_with_length() -> None:
    runs = sweep(train=TrainConfig(steps=2, extrapolate=[2])).runs()
    assert {run.train.extrapolate == [2.0] for run in runs} == {True}
