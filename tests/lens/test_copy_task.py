"""The copying probe ``[BOS] + x + x``: its layout, the positions scored, and known-answer scores."""

from __future__ import annotations

import math

import pytest
import torch

from attnlab.errors import ConfigError
from attnlab.lens.copy_task import CopyTask, copy_loss, induction_tokens, measure_copy

TASK = CopyTask(n=6, low=3, high=31, bos=1)


def test_copy_task_layout_and_scored_positions() -> None:
    tokens = TASK.batch(4, torch.Generator().manual_seed(0))
    assert tokens.shape == (4, 13) and TASK.length == 13
    assert (tokens[:, 0] == 1).all() and torch.equal(tokens[:, 1:7], tokens[:, 7:])
    assert ((tokens[:, 1:] >= 3) & (tokens[:, 1:] < 31)).all()
    assert TASK.targets() == slice(8, 13)  # the second copy after its first token: n − 1 = 5 targets
    no_bos = CopyTask(n=6, low=3, high=31, bos=None)
    assert no_bos.batch(2, torch.Generator().manual_seed(0)).shape == (2, 12) and no_bos.targets() == slice(7, 12)
    with pytest.raises(ConfigError, match="at least 2"):
        CopyTask(n=1)


def test_copy_loss_and_accuracy_on_hand_made_logits() -> None:
    tokens = TASK.batch(2, torch.Generator().manual_seed(0))
    logits = torch.zeros(2, 13, 31)  # uniform: loss log 31 everywhere ...
    for t in range(8, 11):  # ... except targets 8, 9, 10, predicted for sure from positions 7, 8, 9
        logits[torch.arange(2), t - 1, tokens[:, t]] = 100.0
    assert float(copy_loss(logits, tokens, TASK)) == pytest.approx(2 / 5 * math.log(31), abs=1e-5)

    class Fixed(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return logits[: x.shape[0]]

    scores = measure_copy(Fixed(), tokens, TASK)
    assert scores.copy_loss == pytest.approx(2 / 5 * math.log(31), abs=1e-5)
    assert scores.copy_acc == pytest.approx(3 / 5)  # uniform rows' argmax is id 0, never a target (ids ≥ 3)
    assert scores.first_loss == pytest.approx(math.log(31), abs=1e-5)  # the first copy: uniform rows only


def test_induction_tokens_are_the_tasks_first_sequence_for_the_same_seed() -> None:
    """``attnlab inspect``'s probe and the experiments' batches share one layout and one draw."""
    one = induction_tokens(6, seed=4, low=3, high=31, bos=1)
    assert torch.equal(one, TASK.batch(1, torch.Generator().manual_seed(4)))
    assert TASK.first_copy() == slice(2, 7)  # the first copy after its first token: n − 1 = 5 targets
