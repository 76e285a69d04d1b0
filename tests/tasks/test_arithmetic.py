"""Addition and multiplication: hand-checked sequences in every format, scored positions, determinism, padding to
a longer length, and the whole-answer metric."""

from __future__ import annotations

import pytest
import torch

from attnlab.errors import ConfigError
from attnlab.tasks import IGNORE, task_from_dict
from attnlab.tasks.addition import AdditionConfig
from attnlab.tasks.arithmetic import EQUALS, FIRST_HINT, PAD, PLUS, TIMES
from attnlab.tasks.base import exact_match
from attnlab.tasks.multiplication import MultiplicationConfig

A, B, C, D = (FIRST_HINT + i for i in range(4))  # hint letters of significance 0, 1, 2, 3 (offset 0)

# 47 + 856 = 903, three-digit operands, a four-digit answer
ADDITION = {
    "plain": [0, 4, 7, PLUS, 8, 5, 6, EQUALS, 0, 9, 0, 3],
    "reversed": [7, 4, 0, PLUS, 6, 5, 8, EQUALS, 3, 0, 9, 0],
    "index_hints": [A, 7, B, 4, C, 0, PLUS, A, 6, B, 5, C, 8, EQUALS, A, 3, B, 0, C, 9, D, 0],
    "plain_index_hints": [C, 0, B, 4, A, 7, PLUS, C, 8, B, 5, A, 6, EQUALS, D, 0, C, 9, B, 0, A, 3],
}


@pytest.mark.parametrize("fmt", sorted(ADDITION))
def test_addition_writes_a_hand_checked_example(fmt: str) -> None:
    config = AdditionConfig(digits=3, format=fmt, hint_offset="zero")
    batch = config.build(0).encode([47], [856])
    assert batch.inputs[0].tolist() == ADDITION[fmt] and config.seq_len == len(ADDITION[fmt])
    # scored: each position whose next token is an answer digit, with that digit as its target
    answer = [t for t in ADDITION[fmt][ADDITION[fmt].index(EQUALS) + 1 :] if t < 10]
    scored = batch.targets[0] != IGNORE
    assert batch.targets[0][scored].tolist() == answer
    assert torch.equal(batch.targets[0][scored], batch.inputs[0][1:][scored[:-1]])


def test_multiplication_writes_a_hand_checked_example() -> None:
    # 47 × 856 = 40232: the answer at six digits, 040232; reversed: 232040
    plain = MultiplicationConfig(digits=3, format="plain").build(0).encode([47], [856])
    assert plain.inputs[0].tolist() == [0, 4, 7, TIMES, 8, 5, 6, EQUALS, 0, 4, 0, 2, 3, 2]
    reversed_ = MultiplicationConfig(digits=3, format="reversed").build(0).encode([47], [856])
    assert reversed_.inputs[0].tolist() == [7, 4, 0, TIMES, 6, 5, 8, EQUALS, 2, 3, 2, 0, 4, 0]
    assert reversed_.targets[0].tolist() == [IGNORE] * 7 + [2, 3, 2, 0, 4, 0, IGNORE]
    short = MultiplicationConfig(digits=3, b_digits=1, format="reversed").build(0).encode([999], [9])
    assert short.inputs[0].tolist() == [9, 9, 9, TIMES, 9, EQUALS, 1, 9, 9, 8]  # 8991


def test_the_hint_offset_shifts_every_letter_alike() -> None:
    config = AdditionConfig(digits=3, format="index_hints", hint_offset="zero")
    shifted = config.build(0).encode([47], [856], 5)
    expected = [t + 5 if t >= FIRST_HINT else t for t in ADDITION["index_hints"]]
    assert shifted.inputs[0].tolist() == expected


@pytest.mark.parametrize("task", [AdditionConfig, MultiplicationConfig])
@pytest.mark.parametrize("fmt", sorted(ADDITION))
def test_sampled_answers_are_right(task: type, fmt: str) -> None:
    """Decode every sampled example of the random-offset default and recompute its answer."""
    config = task(digits=4, format=fmt)
    batch = config.build(1).train_batch(3, 64)
    for row in batch.inputs:
        tokens = [t for t in row.tolist() if t < 10 or t in (PLUS, TIMES, EQUALS)]
        a, b, c = split_numbers(tokens)
        if fmt in ("reversed", "index_hints"):
            a, b, c = a[::-1], b[::-1], c[::-1]
        assert int(c) == config.combine(int(a), int(b))
    if config.hinted:  # letters stay within the alphabet, the same for the same significance
        assert int(batch.inputs.max()) < config.vocab_size


def split_numbers(tokens: list[int]) -> tuple[str, str, str]:
    parts: list[list[int]] = [[]]
    for t in tokens:
        if t < 10:
            parts[-1].append(t)
        else:
            parts.append([])
    a, b, c = ("".join(map(str, p)) for p in parts)
    return a, b, c


@pytest.mark.parametrize("name", ["addition", "multiplication"])
def test_batches_are_a_function_of_the_seed_and_step(name: str) -> None:
    config = task_from_dict({"name": name, "format": "index_hints"})
    first = config.build(2).train_batch(5, 16)
    assert torch.equal(first.inputs, config.build(2).train_batch(5, 16).inputs)
    assert not torch.equal(first.inputs, config.build(3).train_batch(5, 16).inputs)
    assert not torch.equal(first.inputs, config.build(2).train_batch(6, 16).inputs)


@pytest.mark.parametrize("fmt", sorted(ADDITION))
def test_with_length_pads_longer_operands_to_the_length(fmt: str) -> None:
    config = AdditionConfig(digits=5, format=fmt)
    longer = config.with_length(2 * config.seq_len + 1)
    assert longer.seq_len == 2 * config.seq_len + 1 and longer.digits > 2 * config.digits - 1
    assert longer.vocab_size == config.vocab_size
    assert longer.model_copy(update={"digits": longer.digits + 1, "length": None}).natural_length > longer.seq_len
    batch = longer.build(0).eval_batch(8)
    pad = longer.seq_len - longer.natural_length
    assert bool((batch.inputs[:, :pad] == PAD).all()) and not bool((batch.inputs[:, pad:] == PAD).any())
    assert int((batch.targets[0] != IGNORE).sum()) == longer.answer_width


def test_bad_configs_are_one_line_errors() -> None:
    with pytest.raises(ConfigError, match="hints"):
        AdditionConfig(digits=40, format="index_hints")
    with pytest.raises(ConfigError, match="length"):
        AdditionConfig(digits=5, length=10)
    with pytest.raises(ConfigError, match="format"):
        task_from_dict({"name": "addition", "format": "backwards"})


def test_exact_match_needs_every_answer_digit() -> None:
    targets = torch.tensor([[IGNORE, 1, 2], [IGNORE, 3, 4]])
    logits = torch.nn.functional.one_hot(torch.tensor([[0, 1, 2], [0, 3, 0]]), 5).float()
    assert float(exact_match(logits, targets)) == 0.5
