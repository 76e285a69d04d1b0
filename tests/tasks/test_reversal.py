"""Reversal: the target is the source reversed, the decoder input is BOS then the target shifted right (teacher
forcing), every target position is scored, and it needs an encoder-decoder."""

from __future__ import annotations

import torch

from attnlab.tasks import IGNORE
from attnlab.tasks.reversal import BOS, ReversalConfig


def test_the_target_is_the_source_reversed() -> None:
    batch = ReversalConfig(vocab=16, length=9).build(seed=0).train_batch(2, 8)
    assert batch.source is not None
    for source, targets in zip(batch.source.tolist(), batch.targets.tolist(), strict=True):
        assert targets == source[::-1]


def test_the_decoder_input_is_bos_then_the_target_shifted_right() -> None:
    batch = ReversalConfig(vocab=16, length=9).build(seed=0).train_batch(5, 8)
    assert bool((batch.inputs[:, 0] == BOS).all())
    assert torch.equal(batch.inputs[:, 1:], batch.targets[:, :-1])


def test_every_target_is_scored_and_content_never_uses_bos() -> None:
    batch = ReversalConfig(vocab=4, length=30).build(seed=3).eval_batch(16)
    assert batch.source is not None
    assert not bool((batch.targets == IGNORE).any())
    assert int(batch.source.min()) > BOS and int(batch.source.max()) < 4


def test_the_source_is_a_function_of_seed_and_step() -> None:
    first = ReversalConfig().build(seed=4).train_batch(11, 8).source
    assert torch.equal(first, ReversalConfig().build(seed=4).train_batch(11, 8).source)
    assert not torch.equal(first, ReversalConfig().build(seed=4).train_batch(12, 8).source)


def test_reversal_needs_an_encoder_decoder() -> None:
    assert ReversalConfig.mode == "encoder_decoder"


def test_with_length_changes_source_and_target_length() -> None:
    batch = ReversalConfig(vocab=16, length=6).with_length(24).build(seed=0).eval_batch(3)
    assert batch.source is not None
    assert batch.source.shape == batch.inputs.shape == batch.targets.shape == (3, 24)
