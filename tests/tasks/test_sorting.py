"""Sorting: the targets are the inputs in ascending order, every position is scored, and it needs an encoder."""

from __future__ import annotations

import pytest
import torch

from attnlab.errors import ConfigError
from attnlab.tasks import IGNORE
from attnlab.tasks.sorting import SortingConfig


def test_the_target_row_is_the_input_row_sorted() -> None:
    batch = SortingConfig(vocab=8, length=12).build(seed=0).train_batch(3, 16)
    for inputs, targets in zip(batch.inputs.tolist(), batch.targets.tolist(), strict=True):
        assert targets == sorted(inputs)


def test_ties_are_kept_as_often_as_they_occur() -> None:
    batch = SortingConfig(vocab=3, length=20).build(seed=1).train_batch(0, 8)  # 20 draws from 3 tokens: ties
    for inputs, targets in zip(batch.inputs, batch.targets, strict=True):
        assert torch.equal(torch.bincount(inputs, minlength=3), torch.bincount(targets, minlength=3))
        assert bool((targets[1:] >= targets[:-1]).all())


def test_every_position_is_scored_and_tokens_come_from_the_vocabulary() -> None:
    batch = SortingConfig(vocab=5, length=6).build(seed=0).eval_batch(32)
    assert not bool((batch.targets == IGNORE).any())
    assert int(batch.inputs.min()) >= 0 and int(batch.inputs.max()) < 5
    assert batch.source is None


def test_sorting_needs_a_non_causal_encoder() -> None:
    assert SortingConfig.mode == "encoder" and SortingConfig.causal is False


def test_with_length_keeps_the_vocabulary_and_changes_the_length() -> None:
    longer = SortingConfig(vocab=9, length=10).with_length(40)
    assert (longer.vocab, longer.seq_len) == (9, 40)
    assert longer.build(seed=0).eval_batch(4).inputs.shape == (4, 40)


def test_a_one_token_sequence_is_rejected() -> None:
    with pytest.raises(ConfigError, match="length"):
        SortingConfig(length=1)
