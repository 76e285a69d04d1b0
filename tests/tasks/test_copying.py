"""Copying (Jelassi et al. 2024, arXiv:2402.01032): x SEP x PAD …, scored on the reproduction."""

from __future__ import annotations

import math

import pytest
import torch

from attnlab.errors import ConfigError
from attnlab.model.config import ModelConfig
from attnlab.model.transformer import TransformerLM
from attnlab.tasks import IGNORE, Batch, task_from_dict
from attnlab.tasks.copying import FIRST_CONTENT, PAD, SEP, CopyingConfig
from attnlab.train import TrainConfig, evaluate, train

VOCAB, SPAN, LENGTH = 16, 6, 16
CONFIG = CopyingConfig(vocab=VOCAB, span=SPAN, length=LENGTH)


@pytest.fixture(scope="module")
def batch() -> Batch:
    return CONFIG.build(seed=0).train_batch(step=1, batch_size=64)


def test_batches_have_the_configured_length(batch: Batch) -> None:
    assert batch.inputs.shape == batch.targets.shape == (64, LENGTH)


def test_the_span_is_drawn_from_the_content_tokens(batch: Batch) -> None:
    span = batch.inputs[:, :SPAN]
    assert span.min() >= FIRST_CONTENT and span.max() < VOCAB


def test_the_separator_follows_the_span(batch: Batch) -> None:
    assert (batch.inputs[:, SPAN] == SEP).all()


def test_the_span_is_repeated_after_the_separator(batch: Batch) -> None:
    assert torch.equal(batch.inputs[:, SPAN + 1 : 2 * SPAN + 1], batch.inputs[:, :SPAN])


def test_padding_fills_the_rest(batch: Batch) -> None:
    assert (batch.inputs[:, 2 * SPAN + 1 :] == PAD).all()


def test_special_tokens_appear_only_at_their_places(batch: Batch) -> None:
    assert ((batch.inputs == SEP).sum(dim=1) == 1).all()
    assert ((batch.inputs == PAD).sum(dim=1) == LENGTH - 2 * SPAN - 1).all()


def test_only_the_separator_and_the_reproduction_but_its_last_token_are_scored(batch: Batch) -> None:
    scored = (batch.targets != IGNORE).nonzero()[:, 1].unique().tolist()
    assert scored == list(range(SPAN, 2 * SPAN))


def test_the_scored_targets_are_the_span(batch: Batch) -> None:
    assert torch.equal(batch.targets[:, SPAN : 2 * SPAN], batch.inputs[:, :SPAN])


@pytest.mark.parametrize(
    ("config", "field", "value", "allowed"),
    [
        ({"span": 8, "length": 16}, "span", "8", "1 … 7"),
        ({"vocab": 3}, "vocab", "3", "4 …"),
        ({"bogus": 1}, "bogus", "1", "span"),
    ],
    ids=["span-too-long-for-length", "no-room-for-content", "unknown-key"],
)
def test_a_bad_copying_config_names_field_value_and_allowed_values(
    config: dict, field: str, value: str, allowed: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        task_from_dict({"name": "copying", **config})
    message = str(caught.value)
    assert "\n" not in message
    assert f"{field}={value}" in message
    assert "(allowed: " in message and allowed in message.split("(allowed: ", 1)[1]


def test_eighty_steps_learn_to_copy_beyond_guessing_a_content_token() -> None:
    model = ModelConfig(vocab_size=VOCAB, d_model=32, n_layers=2, n_heads=4, mlp=False, max_seq_len=LENGTH)
    cfg = TrainConfig(steps=80, batch_size=32, lr=1e-2, eval_every=80, eval_examples=256)
    torch.manual_seed(0)  # the initialisation `train` starts from with seed 0
    before = evaluate(TransformerLM(model), CONFIG.build(seed=0).eval_batch(256), cfg)["loss"]
    after = train(model, CONFIG, cfg, seed=0).final["loss"]
    assert after < min(before, math.log(VOCAB - FIRST_CONTENT)) - 0.5
