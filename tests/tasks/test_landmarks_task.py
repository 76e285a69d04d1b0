"""The ``landmarks`` task (a landmark token after every block of an inner task's tokens) and the ``longctx-passkey``
preset that trains landmark attention on it."""

from __future__ import annotations

import pytest
import torch

from attnlab.attention.heads.landmark import landmark_positions
from attnlab.errors import ConfigError
from attnlab.sweeps import load_sweep
from attnlab.tasks import IGNORE, task_from_dict
from attnlab.tasks.landmarks import LandmarksConfig
from attnlab.tasks.passkey import PasskeyConfig


def config(block: int = 4, length: int = 24) -> LandmarksConfig:
    return task_from_dict({"name": "landmarks", "task": {"name": "passkey", "length": length}, "block": block})


@pytest.mark.parametrize(("block", "length"), [(4, 24), (5, 23), (1, 15), (30, 24)])
def test_the_stream_is_the_inner_stream_with_a_landmark_after_every_block(block: int, length: int) -> None:
    c = config(block, length)
    inner = c.task.build(0).train_batch(3, 6)
    batch = c.build(0).train_batch(3, 6)
    assert batch.inputs.shape == (6, c.seq_len) == (6, length + length // block)
    at = landmark_positions(c.seq_len, block)  # the positions heads="landmark" treats as landmarks
    assert (batch.inputs[:, at] == c.landmark_id).all() and c.landmark_id == c.vocab_size - 1
    assert int(at.sum()) == length // block
    assert torch.equal(batch.inputs[:, ~at], inner.inputs)  # the inner tokens, in order
    assert torch.equal(batch.targets[:, ~at], inner.targets)  # each with its own target
    assert (batch.targets[:, at] == IGNORE).all()
    assert not (inner.inputs == c.landmark_id).any()


def test_with_length_scales_the_stream_and_keeps_the_block() -> None:
    c = config(block=8, length=64)
    assert c.seq_len == 72
    for factor in (2, 4, 8):
        longer = c.with_length(factor * c.seq_len)
        assert longer.block == 8 and longer.task.length == factor * 64 and longer.seq_len == factor * 72


def test_only_a_decoder_task_can_be_wrapped() -> None:
    with pytest.raises(ConfigError, match=r"task\.name='sorting': landmarks wrap a decoder task"):
        task_from_dict({"name": "landmarks", "task": {"name": "sorting"}})
    with pytest.raises(ConfigError, match="block"):
        task_from_dict({"name": "landmarks", "block": 0})


def test_the_preset_trains_every_entry_at_t_and_evaluates_at_2t_4t_8t_with_matching_blocks() -> None:
    suite = load_sweep("longctx-passkey")
    runs = suite.runs()
    heads = sorted({r.model.attention.heads for r in runs})
    assert heads == ["cca", "landmark", "mha"]
    for run in runs:
        assert run.train.extrapolate == [2, 4, 8]
        inner = run.task.task if isinstance(run.task, LandmarksConfig) else run.task
        assert isinstance(inner, PasskeyConfig) and inner.length == 64
        if run.model.attention.heads == "landmark":
            assert isinstance(run.task, LandmarksConfig)
            assert run.model.attention.heads_args["block"] == run.task.block  # landmarks found by position
