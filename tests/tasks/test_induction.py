"""Induction (Olsson et al. 2022, arXiv:2209.11895): [BOS] x x, scored on the second copy after its first token."""

from __future__ import annotations

import math

import pytest
import torch

from attnlab.errors import ConfigError
from attnlab.model.config import ModelConfig
from attnlab.model.transformer import TransformerLM
from attnlab.tasks import IGNORE, Batch, task_from_dict
from attnlab.tasks.induction import BOS, InductionConfig
from attnlab.train import TrainConfig, evaluate, train

VOCAB, HALF = 16, 8
CONFIG = InductionConfig(vocab=VOCAB, half=HALF)


@pytest.fixture(scope="module")
def batch() -> Batch:
    return CONFIG.build(seed=0).train_batch(step=1, batch_size=64)


def test_a_sequence_is_bos_then_half_tokens_twice(batch: Batch) -> None:
    assert batch.inputs.shape == batch.targets.shape == (64, 1 + 2 * HALF) == (64, CONFIG.seq_len)


def test_only_the_first_position_holds_bos(batch: Batch) -> None:
    assert (batch.inputs[:, 0] == BOS).all() and (batch.inputs[:, 1:] != BOS).all()


def test_content_tokens_are_in_the_vocabulary(batch: Batch) -> None:
    assert batch.inputs.min() >= 0 and batch.inputs.max() < VOCAB


def test_the_second_copy_equals_the_first(batch: Batch) -> None:
    assert torch.equal(batch.inputs[:, 1 : 1 + HALF], batch.inputs[:, 1 + HALF :])


def test_only_the_second_copy_but_its_last_position_is_scored(batch: Batch) -> None:
    scored = (batch.targets != IGNORE).nonzero()[:, 1].unique().tolist()
    assert scored == list(range(1 + HALF, 2 * HALF))


def test_a_scored_target_is_the_next_token_which_the_first_copy_determines(batch: Batch) -> None:
    scored = batch.targets != IGNORE
    next_tokens = torch.roll(batch.inputs, -1, dims=1)
    first_copy_next = torch.roll(batch.inputs, HALF - 1, dims=1)  # [:, p] = inputs[:, p - HALF + 1]
    assert torch.equal(batch.targets[scored], next_tokens[scored])
    assert torch.equal(batch.targets[scored], first_copy_next[scored])


def test_without_bos_the_sequence_is_two_copies_over_the_whole_vocabulary() -> None:
    batch = InductionConfig(vocab=4, half=HALF, bos=False).build(seed=0).train_batch(1, 64)
    assert batch.inputs.shape == (64, 2 * HALF)
    assert torch.equal(batch.inputs[:, :HALF], batch.inputs[:, HALF:])
    assert set(batch.inputs.unique().tolist()) == {0, 1, 2, 3}


@pytest.mark.parametrize(
    ("config", "field", "value", "allowed"),
    [
        ({"half": 1}, "half", "1", "2 …"),
        ({"vocab": 2}, "vocab", "2", "3 …"),
        ({"vocab": 1, "bos": False}, "vocab", "1", "2 …"),
        ({"bogus": 1}, "bogus", "1", "half"),
    ],
    ids=["half-too-short", "no-content-besides-bos", "one-token-vocabulary", "unknown-key"],
)
def test_a_bad_induction_config_names_field_value_and_allowed_values(
    config: dict, field: str, value: str, allowed: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        task_from_dict({"name": "induction", **config})
    message = str(caught.value)
    assert "\n" not in message
    assert f"{field}={value}" in message
    assert "(allowed: " in message and allowed in message.split("(allowed: ", 1)[1]


def test_eighty_steps_learn_induction_beyond_guessing_a_content_token() -> None:
    model = ModelConfig(vocab_size=VOCAB, d_model=32, n_layers=2, n_heads=4, mlp=False, max_seq_len=CONFIG.seq_len)
    cfg = TrainConfig(steps=80, batch_size=32, lr=1e-2, eval_every=80, eval_examples=256)
    torch.manual_seed(0)  # the initialisation `train` starts from with seed 0
    before = evaluate(TransformerLM(model), CONFIG.build(seed=0).eval_batch(256), cfg)["loss"]
    after = train(model, CONFIG, cfg, seed=0).final["loss"]
    assert after < min(before, math.log(VOCAB - 1)) - 0.5
