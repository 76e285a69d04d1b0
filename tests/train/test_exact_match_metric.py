"""The whole-answer metric: ``evaluate`` reports ``exact_match`` for tasks with ``sequence_metric`` (arithmetic), on
known answers (an oracle that reads the teacher-forced next token, with chosen digits made wrong), whatever the
chunking; at every extrapolation factor (NaN where the model cannot represent the length); and through ``train``
into the final metrics and the curves. Tasks without the flag report loss and accuracy only."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from attnlab.model.config import ModelConfig
from attnlab.model.transformer import PositionRangeError
from attnlab.tasks.addition import AdditionConfig
from attnlab.tasks.base import IGNORE, Batch
from attnlab.tasks.mqar import MQARConfig
from attnlab.tasks.multiplication import MultiplicationConfig
from attnlab.train import TrainConfig, evaluate, train
from attnlab.train.loop import evaluate_extrapolation, metric_names

CFG = TrainConfig(steps=2, batch_size=8, eval_every=1, eval_examples=32, extrapolate=[2.0])


class Oracle(nn.Module):
    """Logits whose argmax is the next input token (the teacher-forced target), except at ``wrong`` positions, where
    it is that token + 1 (mod V). ``wrong`` maps an input row (its tokens, so that the chunks ``evaluate`` cuts do
    not matter) to its wrong positions, or ``None`` to positions wrong in every row; ``max_len``: longer inputs raise
    PositionRangeError, as a model whose positions run out does."""

    def __init__(self, vocab: int, wrong: dict[tuple[int, ...] | None, list[int]] | None = None, max_len: int = 0):
        super().__init__()
        self.vocab, self.wrong, self.max_len = vocab, wrong or {}, max_len

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if self.max_len and inputs.shape[1] > self.max_len:
            raise PositionRangeError(f"length {inputs.shape[1]} > {self.max_len}")
        nxt = torch.cat([inputs[:, 1:], inputs[:, :1]], dim=1)
        for row, tokens in enumerate(inputs.tolist()):
            for pos in self.wrong.get(tuple(tokens), []) + self.wrong.get(None, []):
                nxt[row, pos] = (nxt[row, pos] + 1) % self.vocab
        return nn.functional.one_hot(nxt, self.vocab).float()


def answer_positions(batch: Batch) -> list[int]:
    return torch.nonzero(batch.targets[0] != IGNORE).squeeze(1).tolist()


@pytest.mark.parametrize("fmt", ["plain", "reversed", "index_hints"])
def test_exact_match_counts_examples_with_every_digit_right(fmt: str) -> None:
    task = AdditionConfig(digits=3, format=fmt)
    batch = task.build(0).eval_batch(8)
    scored = answer_positions(batch)  # 4 answer digits
    rows = [tuple(r) for r in batch.inputs.tolist()]
    assert len(set(rows)) == 8
    # row 0: one wrong digit; row 5: two wrong digits; the others right. 3 of 32 digits wrong, 2 of 8 answers.
    model = Oracle(task.vocab_size, {rows[0]: [scored[0]], rows[5]: [scored[1], scored[3]]})
    for chunk in (256, 3, 1):  # one chunk, uneven chunks, one row per chunk
        metrics = evaluate(model, batch, CFG, chunk=chunk, sequence_metric=True)
        assert set(metrics) == set(metric_names(True)) == {"loss", "accuracy", "exact_match"}
        assert metrics["exact_match"] == 6 / 8
        assert metrics["accuracy"] == pytest.approx(29 / 32, abs=1e-12)
    assert evaluate(Oracle(task.vocab_size), batch, CFG, sequence_metric=True)["exact_match"] == 1.0


def test_wrong_positions_outside_the_answer_do_not_count() -> None:
    task = MultiplicationConfig(digits=2, format="reversed")
    batch = task.build(1).eval_batch(4)
    unscored = [p for p in range(task.seq_len) if p not in answer_positions(batch)]
    model = Oracle(task.vocab_size, {None: unscored[:3]})
    assert evaluate(model, batch, CFG, sequence_metric=True)["exact_match"] == 1.0


def test_tasks_without_the_flag_report_loss_and_accuracy_only() -> None:
    assert MQARConfig.sequence_metric is False and AdditionConfig.sequence_metric is True
    task = MQARConfig(vocab=16, length=16, num_kv_pairs=2)
    metrics = evaluate(Oracle(task.vocab_size), task.build(0).eval_batch(8), CFG)
    assert set(metrics) == set(metric_names(False)) == {"loss", "accuracy"}


def test_extrapolation_reports_exact_match_at_each_factor_and_nan_beyond_the_model() -> None:
    task = AdditionConfig(digits=3, format="reversed")
    metrics, notes = evaluate_extrapolation(Oracle(task.vocab_size), task, CFG, seed=0)
    assert metrics["exact_match@2x"] == 1.0 and metrics["accuracy@2x"] == 1.0
    # one wrong digit in every row at 2x (the answer's first digit): no answer is right, 1 digit in 8 is wrong
    longer = task.with_length(2 * task.seq_len)
    first = answer_positions(longer.build(0).eval_batch(1))[0]
    model = Oracle(task.vocab_size, {None: [first]})
    metrics, _ = evaluate_extrapolation(model, task, CFG, seed=0)
    assert metrics["exact_match@2x"] == 0.0
    assert metrics["accuracy@2x"] == pytest.approx(1 - 1 / (longer.digits + 1), abs=1e-12)
    metrics, notes = evaluate_extrapolation(Oracle(task.vocab_size, max_len=task.seq_len), task, CFG, seed=0)
    assert all(math.isnan(metrics[f"{m}@2x"]) for m in ("loss", "accuracy", "exact_match")) and len(notes) == 1


def test_train_reports_exact_match_in_final_metrics_and_curves() -> None:
    task = AdditionConfig(digits=2, format="index_hints")
    model = ModelConfig(vocab_size=task.vocab_size, d_model=16, n_layers=1, n_heads=2, max_seq_len=task.seq_len)
    result = train(model, task, CFG, seed=0)
    for name in ("exact_match", "exact_match@2x"):
        assert 0.0 <= result.final[name] <= 1.0
    assert [step for step, name, _ in result.curves if name == "eval_exact_match"] == [1, 2]
    assert result.final["exact_match"] <= result.final["accuracy"]  # a right answer has every digit right
