"""What every registered task promises, checked over the whole registry with each task's default config.

A new task is covered without new test code: batches are a pure function of (seed, step), differ across
steps and seeds, the evaluation set is not a training batch, and scored targets are real token ids. A
sequence-to-sequence task's source obeys the same rules; ``mode`` and ``causal`` agree; ``with_length`` (where a
task has it) gives a valid task of about the asked length.
"""

from __future__ import annotations

import pytest
import torch

from attnlab.tasks import IGNORE, TASKS, task_from_dict
from attnlab.tasks.base import tasks_with_length

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


@pytest.mark.parametrize("name", NAMES)
def test_the_model_mode_and_the_causal_flag_agree(name: str) -> None:
    config = task_from_dict({"name": name})
    assert config.mode in ("decoder", "encoder", "encoder_decoder")
    assert config.causal == (config.mode != "encoder")


@pytest.mark.parametrize("name", NAMES)
def test_a_source_is_there_exactly_for_encoder_decoder_tasks_and_is_deterministic(name: str) -> None:
    config = task_from_dict({"name": name})
    task = config.build(3)
    batch = task.train_batch(7, 8)
    if config.mode != "encoder_decoder":
        assert batch.source is None
        return
    assert batch.source is not None and batch.source.shape[0] == 8
    assert torch.equal(batch.source, config.build(3).train_batch(7, 8).source)
    assert not torch.equal(batch.source, task.train_batch(8, 8).source)
    assert int(batch.source.min()) >= 0 and int(batch.source.max()) < config.vocab_size


@pytest.mark.parametrize("name", tasks_with_length())
def test_with_length_gives_a_valid_task_of_about_that_length(name: str) -> None:
    config = task_from_dict({"name": name})
    for length in (2 * config.seq_len, 4 * config.seq_len + 1):
        longer = config.with_length(length)
        assert type(longer) is type(config) and abs(longer.seq_len - length) <= 1
        batch = longer.build(0).eval_batch(4)
        assert batch.inputs.shape == batch.targets.shape == (4, longer.seq_len)
        assert bool((batch.targets != IGNORE).any())
