"""MQAR as defined in Zoology (Arora et al. 2023, arXiv:2312.04927): k1 v1 … kP vP, then every key queried once."""

from __future__ import annotations

import pytest
import torch

from attnlab.errors import ConfigError
from attnlab.tasks import IGNORE, Batch, task_from_dict
from attnlab.tasks.mqar import MQARConfig

VOCAB, LENGTH, PAIRS = 32, 32, 4


@pytest.fixture(scope="module")
def batch() -> Batch:
    return MQARConfig(vocab=VOCAB, length=LENGTH, num_kv_pairs=PAIRS).build(seed=0).train_batch(step=1, batch_size=64)


def context_keys(batch: Batch) -> torch.Tensor:
    return batch.inputs[:, 0 : 2 * PAIRS : 2]  # [B, P]


def context_values(batch: Batch) -> torch.Tensor:
    return batch.inputs[:, 1 : 2 * PAIRS : 2]  # [B, P]


def query_positions(row_targets: torch.Tensor) -> list[int]:
    return (row_targets != IGNORE).nonzero().flatten().tolist()


def test_context_keys_come_from_the_lower_half_of_the_vocabulary_without_zero(batch: Batch) -> None:
    keys = context_keys(batch)
    assert keys.min() >= 1 and keys.max() < VOCAB // 2


def test_context_values_come_from_the_upper_half_of_the_vocabulary(batch: Batch) -> None:
    values = context_values(batch)
    assert values.min() >= VOCAB // 2 and values.max() < VOCAB


def test_keys_are_distinct_within_an_example(batch: Batch) -> None:
    for keys in context_keys(batch):
        assert len(set(keys.tolist())) == PAIRS


def test_values_are_distinct_within_an_example(batch: Batch) -> None:
    for values in context_values(batch):
        assert len(set(values.tolist())) == PAIRS


def test_context_positions_are_never_scored(batch: Batch) -> None:
    assert (batch.targets[:, : 2 * PAIRS] == IGNORE).all()


def test_every_key_is_queried_exactly_once_after_the_context(batch: Batch) -> None:
    for inputs, targets in zip(batch.inputs, batch.targets, strict=True):
        positions = query_positions(targets)
        assert min(positions) >= 2 * PAIRS
        assert sorted(inputs[positions].tolist()) == sorted(inputs[0 : 2 * PAIRS : 2].tolist())


def test_queries_sit_at_even_offsets_of_the_query_region(batch: Batch) -> None:
    offsets = [p - 2 * PAIRS for targets in batch.targets for p in query_positions(targets)]
    assert all(offset % 2 == 0 for offset in offsets)


def test_the_target_at_a_query_is_the_value_paired_with_its_key_in_the_context(batch: Batch) -> None:
    for inputs, targets in zip(batch.inputs, batch.targets, strict=True):
        pairs = dict(zip(inputs[0 : 2 * PAIRS : 2].tolist(), inputs[1 : 2 * PAIRS : 2].tolist(), strict=True))
        for position in query_positions(targets):
            assert targets[position] == pairs[int(inputs[position])]


def test_each_example_has_exactly_one_scored_position_per_pair(batch: Batch) -> None:
    scored = (batch.targets != IGNORE).sum(dim=1)
    assert scored.tolist() == [PAIRS] * batch.targets.shape[0]


@pytest.mark.parametrize(("vocab", "length", "pairs"), [(16, 16, 2), (20, 24, 6), (64, 40, 10)])
def test_vocabulary_length_and_pairs_are_parameters(vocab: int, length: int, pairs: int) -> None:
    batch = MQARConfig(vocab=vocab, length=length, num_kv_pairs=pairs).build(seed=0).train_batch(1, 8)
    assert batch.inputs.shape == batch.targets.shape == (8, length)
    assert batch.inputs.min() >= 0 and batch.inputs.max() < vocab
    assert (batch.targets != IGNORE).sum(dim=1).tolist() == [pairs] * 8


def test_without_random_non_queries_the_filler_is_token_zero() -> None:
    config = MQARConfig(vocab=VOCAB, length=LENGTH, num_kv_pairs=PAIRS, random_non_queries=False)
    batch = config.build(seed=0).train_batch(1, 16)
    filler = (batch.targets == IGNORE).clone()
    filler[:, : 2 * PAIRS] = False  # the context is not filler
    assert filler.any() and (batch.inputs[filler] == 0).all()


@pytest.mark.parametrize(
    ("config", "field", "value", "allowed"),
    [
        ({"length": 15}, "length", "15", "even"),
        ({"length": 16, "num_kv_pairs": 5}, "num_kv_pairs", "5", "1 … 4"),
        ({"vocab": 8, "length": 64, "num_kv_pairs": 4}, "num_kv_pairs", "4", "1 … 3"),
        ({"vocab": 16, "bogus": 1}, "bogus", "1", "num_kv_pairs"),
    ],
    ids=["odd-length", "pairs-exceed-length", "pairs-exceed-keys", "unknown-key"],
)
def test_a_bad_mqar_config_names_field_value_and_allowed_values(
    config: dict, field: str, value: str, allowed: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        task_from_dict({"name": "mqar", **config})
    message = str(caught.value)
    assert "\n" not in message
    assert f"{field}={value}" in message
    assert "(allowed: " in message and allowed in message.split("(allowed: ", 1)[1]


def test_an_unknown_task_name_lists_the_known_tasks() -> None:
    with pytest.raises(ConfigError, match=r"task='nope': unknown task \(allowed: .*mqar"):
        task_from_dict({"name": "nope"})
