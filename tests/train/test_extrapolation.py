"""Length extrapolation in the training loop: metrics per factor, NaN (not a crash) where learned positions run out,
chunked evaluation, and the config-time rejection of a task that cannot change its length."""

from __future__ import annotations

import math
from typing import Literal

import pytest
import torch

from attnlab.errors import ConfigError
from attnlab.model.config import ModelConfig
from attnlab.model.encdec import build_model
from attnlab.runner.config import RunConfig
from attnlab.tasks import Batch, Task, TaskConfig
from attnlab.tasks.base import extrapolation_tasks
from attnlab.tasks.mqar import MQARConfig
from attnlab.tasks.reversal import ReversalConfig
from attnlab.tasks.sorting import SortingConfig
from attnlab.train import TrainConfig, evaluate, train
from attnlab.train.loop import evaluate_extrapolation

TASK = MQARConfig(vocab=16, length=16, num_kv_pairs=2)
SHORT = TrainConfig(steps=4, batch_size=8, eval_every=2, eval_examples=32, extrapolate=[2, 4])


def lm(position: str, mode: str = "decoder", vocab: int = 16, length: int = 16) -> ModelConfig:
    return ModelConfig(
        vocab_size=vocab,
        d_model=16,
        n_layers=1,
        n_heads=2,
        mode=mode,
        max_seq_len=length,
        attention={"position": position},
    )


class FixedLengthConfig(TaskConfig):
    """A task without ``with_length`` (not registered)."""

    name: Literal["fixed_length"] = "fixed_length"

    @property
    def vocab_size(self) -> int:
        return 4

    @property
    def seq_len(self) -> int:
        return 4

    def build(self, seed: int) -> Task:
        return FixedLength(self, seed)


class FixedLength(Task):
    def sample(self, n: int, generator: torch.Generator) -> Batch:
        tokens = torch.randint(0, 4, (n, 4), generator=generator)
        return Batch(tokens, tokens)


def test_rope_reports_finite_metrics_at_every_factor() -> None:
    final = train(lm("rope"), TASK, SHORT, seed=0).final
    for label in ("2x", "4x"):
        assert math.isfinite(final[f"loss@{label}"]) and 0.0 <= final[f"accuracy@{label}"] <= 1.0


def test_learned_positions_give_nan_and_a_reason_instead_of_a_crash() -> None:
    result = train(lm("learned"), TASK, SHORT, seed=0)
    assert math.isfinite(result.final["loss"])  # the run itself is fine
    assert all(math.isnan(result.final[f"{m}@{f}"]) for m in ("loss", "accuracy") for f in ("2x", "4x"))
    assert len(result.notes) == 2 and "beyond the learned table" in result.notes[0]


def test_learned_positions_at_a_factor_below_one_are_evaluated() -> None:
    cfg = SHORT.model_copy(update={"extrapolate": [0.5]})
    final = train(lm("learned"), TASK, cfg, seed=0).final
    assert math.isfinite(final["loss@0.5x"])


def test_the_encoder_decoder_extrapolates_too() -> None:
    task = ReversalConfig(vocab=16, length=6)
    final = train(lm("rope", "encoder_decoder", length=6), task, SHORT, seed=0).final
    assert math.isfinite(final["loss@2x"]) and math.isfinite(final["loss@4x"])


def test_the_metric_at_factor_one_is_the_final_evaluation() -> None:
    cfg = SHORT.model_copy(update={"extrapolate": [1]})
    final = train(lm("rope", "encoder", length=10), SortingConfig(vocab=16, length=10), cfg, seed=2).final
    assert final["loss@1x"] == pytest.approx(final["loss"], rel=1e-5)
    assert final["accuracy@1x"] == pytest.approx(final["accuracy"], rel=1e-5)


def test_extrapolation_evaluates_the_task_at_the_scaled_length() -> None:
    labels_and_lengths = [(label, t.seq_len) for label, t in extrapolation_tasks(TASK, [2, 4, 1.5])]
    assert labels_and_lengths == [("2x", 32), ("4x", 64), ("1.5x", 24)]


def test_chunked_evaluation_equals_one_pass() -> None:
    torch.manual_seed(0)
    model = build_model(lm("rope"))
    batch = TASK.build(0).eval_batch(24)
    whole = evaluate(model, batch, SHORT, chunk=24)
    chunked = evaluate(model, batch, SHORT, chunk=24, max_tokens=5 * 16)  # 5 sequences per chunk
    assert chunked["loss"] == pytest.approx(whole["loss"], rel=1e-5)
    assert chunked["accuracy"] == pytest.approx(whole["accuracy"], rel=1e-6)


def test_an_empty_factor_list_adds_no_metrics() -> None:
    model = build_model(lm("rope"))
    assert evaluate_extrapolation(model, TASK, SHORT.model_copy(update={"extrapolate": []}), 0) == ({}, [])


def test_a_task_without_with_length_is_rejected_naming_the_tasks_that_have_it() -> None:
    with pytest.raises(ConfigError, match=r"train\.extrapolate=\[2\.0\]: task 'fixed_length' .*allowed: .*mqar"):
        extrapolation_tasks(FixedLengthConfig(), [2.0])
    with pytest.raises(ConfigError, match="fixed_length"):
        train(lm("rope", vocab=4, length=4), FixedLengthConfig(), SHORT, seed=0)


def test_a_run_config_rejects_extrapolation_for_such_a_task() -> None:
    with pytest.raises(ConfigError, match=r"RunConfig\.train\.extrapolate.*fixed_length"):
        RunConfig(task=FixedLengthConfig(), model=lm("rope", vocab=4, length=4), train=SHORT)


def test_a_length_the_task_rejects_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"train\.extrapolate=0\.1: task 'mqar' rejects length 2"):
        extrapolation_tasks(TASK, [0.1])


def test_a_repeated_factor_is_rejected() -> None:
    with pytest.raises(ConfigError, match=r"TrainConfig\.extrapolate=\[2\.0, 2\.0\]: factor 2 is given twice"):
        TrainConfig(extrapolate=[2, 2.0])
    with pytest.raises(ConfigError, match="given twice"):
        extrapolation_tasks(TASK, [2, 2.0])


def test_factors_must_be_positive() -> None:
    with pytest.raises(ConfigError, match=r"TrainConfig\.extrapolate\.0"):
        TrainConfig(extrapolate=[0])


def test_an_empty_factor_list_leaves_the_config_json_as_before() -> None:
    assert "extrapolate" not in TrainConfig().canonical_json()
    assert '"extrapolate":[2.0]' in TrainConfig(extrapolate=[2]).canonical_json()
    assert TrainConfig().digest() != TrainConfig(extrapolate=[2]).digest()
