"""Passkey retrieval (Mohtashami & Jaggi 2023, arXiv:2305.16300): filler, KEY + digits at a depth, QUERY + digits."""

from __future__ import annotations

import math

import pytest
import torch

from attnlab.errors import ConfigError
from attnlab.model.config import ModelConfig
from attnlab.model.transformer import TransformerLM
from attnlab.tasks import IGNORE, Batch, task_from_dict
from attnlab.tasks.passkey import FIRST_FILLER, KEY, QUERY, PasskeyConfig
from attnlab.train import TrainConfig, evaluate, train

LENGTH, DIGITS, PERIOD = 32, 4, 5
CONFIG = PasskeyConfig(length=LENGTH, digits=DIGITS, filler_period=PERIOD)
QUERY_AT = LENGTH - DIGITS - 1
FILLER = LENGTH - 2 * DIGITS - 2  # filler tokens in the haystack


@pytest.fixture(scope="module")
def sampled() -> tuple[Batch, torch.Tensor]:
    return CONFIG.build(seed=0).sample_with_depth(64, torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def batch(sampled: tuple[Batch, torch.Tensor]) -> Batch:
    return sampled[0]


def key_positions(batch: Batch) -> torch.Tensor:
    return (batch.inputs == KEY).int().argmax(dim=1)  # [B]


def test_batches_have_the_configured_length_and_vocabulary(batch: Batch) -> None:
    assert batch.inputs.shape == batch.targets.shape == (64, LENGTH)
    assert batch.inputs.min() >= 0 and batch.inputs.max() < CONFIG.vocab_size == FIRST_FILLER + PERIOD


def test_each_sequence_has_one_key_marker_and_one_query_marker_before_the_answer(batch: Batch) -> None:
    assert ((batch.inputs == KEY).sum(dim=1) == 1).all() and ((batch.inputs == QUERY).sum(dim=1) == 1).all()
    assert (batch.inputs[:, QUERY_AT] == QUERY).all()


def test_the_answer_after_the_query_is_the_passkey_after_the_key(batch: Batch) -> None:
    for inputs, key in zip(batch.inputs, key_positions(batch).tolist(), strict=True):
        assert inputs[key + 1 : key + 1 + DIGITS].tolist() == inputs[QUERY_AT + 1 :].tolist()
        assert inputs[QUERY_AT + 1 :].max() < 10


def test_the_filler_is_one_fixed_cycle_around_the_needle(batch: Batch) -> None:
    cycle = [FIRST_FILLER + i % PERIOD for i in range(FILLER)]
    for inputs, key in zip(batch.inputs, key_positions(batch).tolist(), strict=True):
        haystack = inputs[:QUERY_AT].tolist()
        assert haystack[:key] + haystack[key + 1 + DIGITS :] == cycle


def test_only_the_query_and_the_answer_but_its_last_digit_are_scored(batch: Batch) -> None:
    scored = (batch.targets != IGNORE).nonzero()[:, 1].unique().tolist()
    assert scored == list(range(QUERY_AT, LENGTH - 1))


def test_the_scored_targets_are_the_passkey(batch: Batch) -> None:
    for inputs, targets, key in zip(batch.inputs, batch.targets, key_positions(batch).tolist(), strict=True):
        assert targets[QUERY_AT : LENGTH - 1].tolist() == inputs[key + 1 : key + 1 + DIGITS].tolist()


def test_the_reported_depth_is_the_needle_position_over_the_filler(sampled: tuple[Batch, torch.Tensor]) -> None:
    batch, depths = sampled
    assert torch.allclose(key_positions(batch).double() / FILLER, depths)


def test_without_a_depth_the_needle_moves_across_the_whole_haystack(sampled: tuple[Batch, torch.Tensor]) -> None:
    _, depths = sampled
    assert depths.min() < 0.2 and depths.max() > 0.8


@pytest.mark.parametrize(("depth", "key_at"), [(0.0, 0), (0.5, FILLER // 2), (1.0, FILLER)])
def test_a_fixed_depth_puts_the_needle_at_that_fraction_of_the_filler(depth: float, key_at: int) -> None:
    config = CONFIG.model_copy(update={"depth": depth})
    batch, depths = config.build(seed=0).sample_with_depth(8, torch.Generator().manual_seed(0))
    assert (key_positions(batch) == key_at).all() and (depths == depth).all()


def test_the_evaluation_depths_belong_to_the_evaluation_set() -> None:
    task = CONFIG.build(seed=0)
    batch, depths = task.eval_batch_with_depth(16)
    assert torch.equal(batch.inputs, task.eval_batch(16).inputs)
    assert torch.allclose(key_positions(batch).double() / FILLER, depths)


def test_with_length_gives_longer_sequences_of_the_same_task() -> None:
    longer = CONFIG.with_length(2 * LENGTH)
    batch = longer.build(seed=0).train_batch(1, 8)
    assert batch.inputs.shape == (8, 2 * LENGTH) and longer.vocab_size == CONFIG.vocab_size
    assert (batch.inputs[:, 2 * LENGTH - DIGITS - 1] == QUERY).all()


def test_with_length_validates_the_new_length() -> None:
    with pytest.raises(ConfigError, match="length=8"):
        CONFIG.with_length(8)


@pytest.mark.parametrize(
    ("config", "field", "value", "allowed"),
    [
        ({"depth": 1.5}, "depth", "1.5", "0 … 1"),
        ({"depth": -0.1}, "depth", "-0.1", "0 … 1"),
        ({"length": 12, "digits": 5}, "length", "12", "13 …"),
        ({"bogus": 1}, "bogus", "1", "depth"),
    ],
    ids=["depth-above-one", "depth-below-zero", "no-room-for-the-passkey", "unknown-key"],
)
def test_a_bad_passkey_config_names_field_value_and_allowed_values(
    config: dict, field: str, value: str, allowed: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        task_from_dict({"name": "passkey", **config})
    message = str(caught.value)
    assert "\n" not in message
    assert f"{field}={value}" in message
    assert "(allowed: " in message and allowed in message.split("(allowed: ", 1)[1]


def test_a_hundred_steps_learn_beyond_guessing_a_digit() -> None:
    task = PasskeyConfig(length=24, digits=2)
    model = ModelConfig(vocab_size=task.vocab_size, d_model=32, n_layers=2, n_heads=4, mlp=False, max_seq_len=24)
    cfg = TrainConfig(steps=100, batch_size=32, lr=1e-2, eval_every=100, eval_examples=256)
    torch.manual_seed(0)  # the initialisation `train` starts from with seed 0
    before = evaluate(TransformerLM(model), task.build(seed=0).eval_batch(256), cfg)["loss"]
    after = train(model, task, cfg, seed=0).final["loss"]
    assert after < min(before, math.log(10)) - 0.5
