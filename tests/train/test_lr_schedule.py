"""``lr_at``: linear warmup to lr, then cosine decay to lr · min_lr_frac at the last step."""

from __future__ import annotations

import itertools
import math

import pytest

from attnlab.train.config import TrainConfig
from attnlab.train.loop import lr_at

CFG = TrainConfig(steps=100, lr=1e-2, warmup_frac=0.1, min_lr_frac=0.1)  # warmup: steps 0 … 9


def test_warmup_rises_linearly_to_the_peak() -> None:
    assert [lr_at(s, CFG) for s in range(10)] == pytest.approx([1e-2 * (s + 1) / 10 for s in range(10)])


def test_decay_starts_at_the_peak() -> None:
    assert lr_at(10, CFG) == pytest.approx(1e-2)


def test_decay_is_half_way_between_peak_and_floor_half_way_through() -> None:
    assert lr_at(55, CFG) == pytest.approx((1e-2 + 1e-3) / 2)


def test_decay_follows_a_cosine() -> None:
    progress = (30 - 10) / 90
    assert lr_at(30, CFG) == pytest.approx(1e-3 + (1e-2 - 1e-3) * 0.5 * (1 + math.cos(math.pi * progress)))


def test_decay_ends_at_lr_times_min_lr_frac() -> None:
    assert lr_at(100, CFG) == pytest.approx(1e-3)


def test_decay_never_rises() -> None:
    decay = [lr_at(s, CFG) for s in range(10, 101)]
    assert all(b <= a for a, b in itertools.pairwise(decay))


def test_without_warmup_the_first_step_uses_the_peak() -> None:
    assert lr_at(0, TrainConfig(steps=100, lr=1e-2, warmup_frac=0.0)) == pytest.approx(1e-2)
