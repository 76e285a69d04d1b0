"""The training loop: scored-position loss and accuracy, determinism, early stop, and that it learns MQAR."""

from __future__ import annotations

import math

import pytest
import torch

from attnlab.errors import ConfigError
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


def test_compiled_training_matches_eager_and_keeps_old_run_ids(monkeypatch: pytest.MonkeyPatch) -> None:
    """``compile=True`` trains the same model through torch.compile (same parameters, same losses to float
    tolerance); off, the field is not in the canonical JSON, so run ids from before it existed still match."""
    from attnlab.attention.fast import flex

    assert "compile" not in TrainConfig().canonical_json()
    assert '"compile":true' in TrainConfig(compile=True).canonical_json()
    cfg = TrainConfig(steps=4, batch_size=8, lr=3e-3, eval_every=2, eval_examples=32)
    if flex.compiler_available():
        eager = train(MODEL, TASK, cfg, seed=3)
        fast = train(MODEL, TASK, cfg.model_copy(update={"compile": True}), seed=3)
        for (s1, n1, v1), (s2, n2, v2) in zip(eager.curves, fast.curves, strict=True):
            assert (s1, n1) == (s2, n2)
            assert v2 == pytest.approx(v1, rel=1e-4, abs=1e-5)
    monkeypatch.setattr(flex, "compiler_available", lambda: False)
    with pytest.raises(ConfigError, match=r"train\.compile"):
        train(MODEL, TASK, cfg.model_copy(update={"compile": True}), seed=3)


def test_train_is_fit_on_the_seeded_model_and_the_tasks_batches() -> None:
    """``train`` = seed, build, then ``fit``: calling ``fit`` by hand on the same pieces gives bitwise the same run,
    and ``on_step`` sees every step, numbered from 1, with the loss the curves record."""
    from attnlab.model.encdec import build_model
    from attnlab.train import fit

    cfg = TrainConfig(steps=6, batch_size=8, eval_every=3, eval_examples=16)
    reference = train(MODEL, TASK, cfg, seed=2)
    torch.manual_seed(2)
    model = build_model(MODEL)
    task = TASK.build(2)
    seen: list[tuple[int, float]] = []
    by_hand = fit(model, task.train_batch, task.eval_batch(cfg.eval_examples), cfg, on_step=lambda *s: seen.append(s))
    assert by_hand.curves == reference.curves
    assert [k for k in reference.final] == [*by_hand.final]  # no extrapolation: the same keys in the same order
    assert {k: v for k, v in by_hand.final.items() if k != "train_s"} == {
        k: v for k, v in reference.final.items() if k != "train_s"
    }
    assert [s for s, _ in seen] == [1, 2, 3, 4, 5, 6]
    recorded = [(s, v) for s, name, v in reference.curves if name == "train_loss"]
    assert [(s, loss) for s, loss in seen if s % 3 == 0] == recorded
