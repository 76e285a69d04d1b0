"""The training loop: scored-position loss and accuracy, determinism, early stop, and that it learns MQAR."""

from __future__ import annotations

import math

import pytest
import torch

from attnlab.model.config import ModelConfig
from attnlab.model.transformer import TransformerLM
from attnlab.tasks import IGNORE
from attnlab.tasks.mqar import MQARConfig
from attnlab.train import TrainConfig, evaluate, train
from attnlab.train.loop import loss_and_accuracy

TASK = MQARConfig(vocab=16, length=16, num_kv_pairs=2)
MODEL = ModelConfig(vocab_size=16, d_model=16, n_layers=1, n_heads=2, max_seq_len=16)


def hand_made_logits() -> tuple[torch.Tensor, torch.Tensor]:
    """Four positions over a vocabulary of 4: two scored (one right, one wrong), two unscored and confidently wrong.

    Scored logits are uniform, so each scored position costs log 4 and its argmax is token 0.
    """
    uniform = [0.0, 0.0, 0.0, 0.0]
    confident = [-20.0, -20.0, -20.0, 20.0]  # argmax 3; a loss of ~40 if it were scored against token 0
    logits = torch.tensor([[uniform, confident, uniform, confident]])  # [B=1, T=4, V=4]
    targets = torch.tensor([[0, IGNORE, 2, IGNORE]])  # position 0 right (argmax 0), position 2 wrong
    return logits, targets


def test_accuracy_counts_only_scored_positions() -> None:
    _, accuracy = loss_and_accuracy(*hand_made_logits())
    assert float(accuracy) == 0.5


def test_loss_averages_only_over_scored_positions() -> None:
    loss, _ = loss_and_accuracy(*hand_made_logits())
    assert float(loss) == pytest.approx(math.log(4))


def test_the_same_configs_and_seed_train_to_bitwise_identical_results() -> None:
    cfg = TrainConfig(steps=20, batch_size=16, lr=3e-3, eval_every=10, eval_examples=64)
    first, second = train(MODEL, TASK, cfg, seed=5), train(MODEL, TASK, cfg, seed=5)
    assert first.curves == second.curves
    assert {k: v for k, v in first.final.items() if k != "train_s"} == {
        k: v for k, v in second.final.items() if k != "train_s"
    }


def test_training_stops_at_the_first_evaluation_that_reaches_the_target_accuracy() -> None:
    cfg = TrainConfig(steps=200, batch_size=16, lr=3e-3, eval_every=5, eval_examples=64, target_accuracy=0.01)
    result = train(MODEL, TASK, cfg, seed=0)
    first_hit = min(step for step, name, value in result.curves if name == "eval_accuracy" and value >= 0.01)
    assert result.final["steps"] == first_hit < cfg.steps


def test_sixty_steps_on_mqar_lower_the_evaluation_loss() -> None:
    cfg = TrainConfig(steps=60, batch_size=32, lr=3e-3, eval_every=20, eval_examples=256)
    torch.manual_seed(0)  # the initialisation `train` starts from with seed 0
    before = evaluate(TransformerLM(MODEL), TASK.build(seed=0).eval_batch(256), cfg)["loss"]
    after = train(MODEL, TASK, cfg, seed=0).final["loss"]
    assert after < before - 0.4
