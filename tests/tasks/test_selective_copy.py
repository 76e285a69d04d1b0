"""Selective copying (Gu & Dao 2023, arXiv:2312.00752): content among blanks, then markers that read it out in order."""

from __future__ import annotations

import math

import pytest
import torch

from attnlab.errors import ConfigError
from attnlab.model.config import ModelConfig
from attnlab.model.transformer import TransformerLM
from attnlab.tasks import IGNORE, Batch, task_from_dict
from attnlab.tasks.selective_copy import BLANK, SelectiveCopyConfig
from attnlab.train import TrainConfig, evaluate, train

VOCAB, LENGTH, M = 8, 16, 3
MARKER = VOCAB - 1
REGION = LENGTH - M
CONFIG = SelectiveCopyConfig(vocab=VOCAB, length=LENGTH, n_memorize=M)


@pytest.fixture(scope="module")
def batch() -> Batch:
    return CONFIG.build(seed=0).train_batch(step=1, batch_size=64)


def test_batches_have_the_configured_length(batch: Batch) -> None:
    assert batch.inputs.shape == batch.targets.shape == (64, LENGTH)


def test_tokens_are_in_the_vocabulary(batch: Batch) -> None:
    assert batch.inputs.min() >= 0 and batch.inputs.max() < VOCAB


def test_the_sequence_ends_with_one_marker_per_content_token(batch: Batch) -> None:
    assert (batch.inputs[:, REGION:] == MARKER).all() and (batch.inputs[:, :REGION] != MARKER).all()


def test_the_region_holds_exactly_n_memorize_content_tokens_among_blanks(batch: Batch) -> None:
    assert ((batch.inputs[:, :REGION] != BLANK).sum(dim=1) == M).all()


def test_content_positions_vary_across_examples(batch: Batch) -> None:
    assert len({tuple((row != BLANK).nonzero().flatten().tolist()) for row in batch.inputs[:, :REGION]}) > 1


def test_only_the_markers_are_scored(batch: Batch) -> None:
    assert ((batch.targets != IGNORE) == (batch.inputs == MARKER)).all()


def test_the_outputs_are_the_content_tokens_in_order(batch: Batch) -> None:
    for inputs, targets in zip(batch.inputs, batch.targets, strict=True):
        region = inputs[:REGION]
        assert targets[REGION:].tolist() == region[region != BLANK].tolist()


@pytest.mark.parametrize(
    ("config", "field", "value", "allowed"),
    [
        ({"length": 10, "n_memorize": 6}, "n_memorize", "6", "1 … 5"),
        ({"vocab": 3}, "vocab", "3", "4 …"),
        ({"bogus": 1}, "bogus", "1", "n_memorize"),
    ],
    ids=["too-many-tokens-for-length", "no-room-for-content", "unknown-key"],
)
def test_a_bad_selective_copy_config_names_field_value_and_allowed_values(
    config: dict, field: str, value: str, allowed: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        task_from_dict({"name": "selective_copy", **config})
    message = str(caught.value)
    assert "\n" not in message
    assert f"{field}={value}" in message
    assert "(allowed: " in message and allowed in message.split("(allowed: ", 1)[1]


def test_a_hundred_steps_learn_beyond_guessing_a_content_token() -> None:
    task = SelectiveCopyConfig(vocab=VOCAB, length=LENGTH, n_memorize=2)
    model = ModelConfig(vocab_size=VOCAB, d_model=32, n_layers=2, n_heads=4, mlp=False, max_seq_len=LENGTH)
    cfg = TrainConfig(steps=100, batch_size=32, lr=1e-2, eval_every=100, eval_examples=256)
    torch.manual_seed(0)  # the initialisation `train` starts from with seed 0
    before = evaluate(TransformerLM(model), task.build(seed=0).eval_batch(256), cfg)["loss"]
    after = train(model, task, cfg, seed=0).final["loss"]
    assert after < min(before, math.log(VOCAB - 2)) - 0.5
