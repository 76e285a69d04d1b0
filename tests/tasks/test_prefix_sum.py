"""prefix_sum: targets are running sums mod m, k behind the source, by hand; the decoder input is BOS then the
target shifted right; the first k positions are not scored; bad delays are one line."""

from __future__ import annotations

import pytest
import torch

from attnlab.errors import ConfigError
from attnlab.tasks import IGNORE
from attnlab.tasks.prefix_sum import BOS, PrefixSumConfig, running_sums


def test_running_sums_by_hand() -> None:
    values = torch.tensor([[5, 7, 4, 1, 3, 9]])
    assert running_sums(values, 10, 0).tolist() == [[5, 2, 6, 7, 0, 9]]
    assert running_sums(values, 10, 2).tolist() == [[0, 0, 5, 2, 6, 7]]
    assert running_sums(values, 3, 1).tolist() == [[0, 2, 0, 1, 2, 2]]


@pytest.mark.parametrize("delay", [0, 1, 3])
def test_targets_follow_the_source_and_only_depend_on_its_prefix(delay: int) -> None:
    config = PrefixSumConfig(modulus=7, length=9, delay=delay)
    batch = config.build(2).train_batch(4, 16)
    assert batch.source is not None
    values = batch.source - 1
    for row, target in zip(values.tolist(), batch.targets.tolist(), strict=True):
        for i, t in enumerate(target):
            assert t == (IGNORE if i < delay else 1 + sum(row[: i - delay + 1]) % 7)
    assert bool((batch.inputs[:, 0] == BOS).all())
    answer = 1 + running_sums(values, 7, delay)
    assert torch.equal(batch.inputs[:, 1:], answer[:, :-1])
    assert int(batch.source.min()) > BOS and int(batch.source.max()) < config.vocab_size


def test_batches_are_a_function_of_the_seed_and_step_and_with_length_changes_both_lengths() -> None:
    config = PrefixSumConfig(delay=1)
    first = config.build(5).train_batch(3, 8)
    assert torch.equal(first.source, config.build(5).train_batch(3, 8).source)
    assert not torch.equal(first.source, config.build(5).train_batch(4, 8).source)
    longer = config.with_length(40).build(0).eval_batch(3)
    assert longer.source is not None and longer.source.shape == longer.inputs.shape == (3, 40)
    assert PrefixSumConfig.mode == "encoder_decoder"


def test_a_delay_that_leaves_nothing_to_score_is_one_line() -> None:
    with pytest.raises(ConfigError, match="delay"):
        PrefixSumConfig(length=4, delay=4)
