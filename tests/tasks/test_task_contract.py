"""What every registered task promises, checked over the whole registry with each task's default config.

A new task is covered without new test code: batches are a pure function of (seed, step), differ across
steps and seeds, the evaluation set is not a training batch, and scored targets are real token ids.
"""

from __future__ import annotations

import pytest
import torch

from attnlab.tasks import IGNORE, TASKS, task_from_dict

NAMES = TASKS.names()


def default_task(name: str, seed: int = 0):
    return task_from_dict({"name": name}).build(seed)


@pytest.mark.parametrize("name", NAMES)
def test_a_training_batch_is_a_function_of_seed_and_step(name: str) -> None:
    first, again = default_task(name, 3).train_batch(7, 8), default_task(name, 3).train_batch(7, 8)
    assert torch.equal(first.inputs, again.inputs) and torch.equal(first.targets, again.targets)


@pytest.mark.parametrize("name", NAMES)
def test_training_batches_differ_across_steps(name: str) -> None:
    task = default_task(name)
    assert not torch.equal(task.train_batch(1, 8).inputs, task.train_batch(2, 8).inputs)


@pytest.mark.parametrize("name", NAMES)
def test_training_batches_differ_across_seeds(name: str) -> None:
    assert not torch.equal(
        default_task(name, 0).train_batch(1, 8).inputs, default_task(name, 1).train_batch(1, 8).inputs
    )


@pytest.mark.parametrize("name", NAMES)
def test_the_evaluation_set_differs_from_every_early_training_batch(name: str) -> None:
    task = default_task(name)
    eval_inputs = task.eval_batch(8).inputs
    assert all(not torch.equal(eval_inputs, task.train_batch(step, 8).inputs) for step in range(50))


@pytest.mark.parametrize("name", NAMES)
def test_batches_have_the_configured_shape_and_real_scored_targets(name: str) -> None:
    config = task_from_dict({"name": name})
    batch = config.build(0).train_batch(0, 8)
    assert batch.inputs.shape == batch.targets.shape == (8, config.seq_len)
    assert int(batch.inputs.min()) >= 0 and int(batch.inputs.max()) < config.vocab_size
    scored = batch.targets[batch.targets != IGNORE]
    assert scored.numel() > 0 and int(scored.min()) >= 0 and int(scored.max()) < config.vocab_size
