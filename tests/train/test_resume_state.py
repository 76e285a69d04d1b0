"""A run stopped at a step (``TrainConfig.stop_at``) and continued from its training state is the run that never
stopped: the same curves, final metrics and weights, bitwise (same process, so same machine and thread count)."""

from __future__ import annotations

import pytest
import torch

from attnlab.errors import ConfigError
from attnlab.model.config import ModelConfig
from attnlab.model.encdec import build_model
from attnlab.tasks.mqar import MQARConfig
from attnlab.train import TrainConfig, fit, train
from attnlab.train.state import StateMismatch, TrainState, from_bytes, to_bytes

TASK = MQARConfig(vocab=16, length=16, num_kv_pairs=2)
MODEL = ModelConfig(vocab_size=16, d_model=16, n_layers=1, n_heads=2, max_seq_len=16)
CFG = TrainConfig(steps=16, batch_size=16, lr=3e-3, eval_every=4, eval_examples=64)


def stopped(cfg: TrainConfig, step: int | None) -> TrainConfig:
    return TrainConfig(**{**dict(cfg), "stop_at": step})


def without_time(final: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in final.items() if k != "train_s"}


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_stop_at_is_left_out_of_the_canonical_json_when_unset_so_run_ids_do_not_change() -> None:
    assert "stop_at" not in TrainConfig().canonical_json()
    assert '"stop_at":8' in stopped(CFG, 8).canonical_json()


def test_stop_at_equal_to_steps_is_the_whole_run() -> None:
    assert stopped(CFG, CFG.steps).stop_at is None
    assert stopped(CFG, CFG.steps).canonical_json() == CFG.canonical_json()


@pytest.mark.parametrize(("step", "problem"), [(20, "is beyond steps=16"), (6, "is not an evaluation step")])
def test_stop_at_must_be_an_evaluation_step_within_the_run(step: int, problem: str) -> None:
    with pytest.raises(ConfigError, match=rf"stop_at={step}: {problem}"):
        stopped(CFG, step)


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])  # fp16: the gradient scaler's state travels too
def test_a_run_continued_from_its_state_is_bitwise_the_uninterrupted_run(precision: str) -> None:
    cfg = CFG.model_copy(update={"precision": precision})
    whole = train(MODEL, TASK, cfg, seed=1)
    first = train(MODEL, TASK, stopped(cfg, 8), seed=1)
    assert first.state is not None and first.state.step == 8 and not first.state.finished
    assert first.curves == [c for c in whole.curves if c[0] <= 8]
    continued = train(MODEL, TASK, cfg, seed=1, resume=from_bytes(to_bytes(first.state)))  # through its bytes
    assert continued.curves == whole.curves  # from step 1: the first part's curves, then the continuation's
    assert without_time(continued.final) == without_time(whole.final)
    assert same_weights(continued.model, whole.model)
    assert continued.state is None  # the whole run keeps no state


def test_a_chain_of_stops_continues_to_the_same_run() -> None:
    """Stop at 4, continue to 8, continue to the end: the search's rungs, one after another."""
    whole = train(MODEL, TASK, CFG, seed=2)
    state = train(MODEL, TASK, stopped(CFG, 4), seed=2).state
    state = train(MODEL, TASK, stopped(CFG, 8), seed=2, resume=state).state
    assert state is not None and state.step == 8
    last = train(MODEL, TASK, CFG, seed=2, resume=state)
    assert (last.curves, without_time(last.final)) == (whole.curves, without_time(whole.final))


def test_a_float64_model_continues_bitwise() -> None:
    """``fit`` on a model in float64 (its AdamW moments in float64 too) stops and continues exactly."""
    task = TASK.build(3)

    def fresh() -> torch.nn.Module:
        torch.manual_seed(3)
        return build_model(MODEL).double()

    whole_model = fresh()
    whole = fit(whole_model, task.train_batch, task.eval_batch(64), CFG)
    first = fit(fresh(), task.train_batch, task.eval_batch(64), stopped(CFG, 8))
    assert first.state is not None
    assert all(t.dtype == torch.float64 for t in first.state.model.values() if t.is_floating_point())
    continued_model = fresh()
    continued = fit(
        continued_model, task.train_batch, task.eval_batch(64), CFG, resume=from_bytes(to_bytes(first.state))
    )
    assert continued.curves == whole.curves
    assert same_weights(continued_model, whole_model)


def test_a_run_that_stopped_early_at_its_target_is_finished_and_its_continuation_trains_nothing() -> None:
    cfg = CFG.model_copy(update={"target_accuracy": 0.01})  # reached at the first evaluation (step 4)
    whole = train(MODEL, TASK, cfg, seed=0)
    first = train(MODEL, TASK, stopped(cfg, 8), seed=0)
    assert first.state is not None and first.state.finished and first.state.step == whole.final["steps"] == 4
    steps: list[int] = []
    continued = fit(
        first.model,
        TASK.build(0).train_batch,
        TASK.build(0).eval_batch(64),
        cfg,
        resume=first.state,
        on_step=lambda step, loss: steps.append(step),
    )
    assert steps == []
    assert continued.curves == whole.curves
    again = train(MODEL, TASK, cfg, seed=0, resume=first.state)
    assert without_time(again.final) == without_time(whole.final)
    assert same_weights(again.model, whole.model)


def test_a_state_round_trips_through_its_bytes() -> None:
    state = train(MODEL, TASK, stopped(CFG, 4), seed=0).state
    assert isinstance(state, TrainState)
    back = from_bytes(to_bytes(state))
    assert (back.step, back.finished, back.curves, back.metrics, back.scaler) == (
        state.step,
        state.finished,
        state.curves,
        state.metrics,
        state.scaler,
    )
    assert all(torch.equal(back.model[k], v) for k, v in state.model.items())
    assert back.optimizer.keys() == state.optimizer.keys()
    assert all(torch.equal(back.optimizer[i][k], v) for i, s in state.optimizer.items() for k, v in s.items())
    assert torch.equal(back.rng["torch"], state.rng["torch"])


def test_bytes_that_are_not_a_training_state_are_refused() -> None:
    with pytest.raises(StateMismatch, match="not an attnlab training state"):
        from_bytes(b"\x00" * 64)


def test_a_state_of_another_training_config_is_refused() -> None:
    state = train(MODEL, TASK, stopped(CFG, 4), seed=0).state
    other = CFG.model_copy(update={"lr": 1e-3})
    with pytest.raises(StateMismatch, match="another config"):
        train(MODEL, TASK, other, seed=0, resume=state)


def test_a_state_past_the_runs_last_step_is_refused() -> None:
    state = train(MODEL, TASK, stopped(CFG, 8), seed=0).state
    with pytest.raises(StateMismatch, match="past the run's last step 4"):
        train(MODEL, TASK, stopped(CFG, 4), seed=0, resume=state)
