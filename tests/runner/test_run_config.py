"""``RunConfig`` identity and validation; ``Sweep`` grid expansion and validation."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from attnlab.errors import ConfigError
from attnlab.runner.config import RunConfig, Sweep
from attnlab.train.config import TrainConfig

MakeSweep = Callable[..., Sweep]


def a_run(**overrides: Any) -> RunConfig:
    fields = {
        "task": {"name": "mqar", "vocab": 16, "length": 16, "num_kv_pairs": 2},
        "model": {"vocab_size": 16, "d_model": 16, "n_layers": 1, "n_heads": 2},
    }
    return RunConfig.parse({**fields, **overrides})


def test_the_same_config_has_the_same_run_id() -> None:
    assert a_run().run_id == a_run().run_id


def test_the_run_id_survives_a_json_round_trip() -> None:
    run = a_run()
    assert RunConfig.model_validate_json(run.canonical_json()).run_id == run.run_id


def test_the_sweep_name_is_not_part_of_the_run_id() -> None:
    assert a_run(sweep="one").run_id == a_run(sweep="other").run_id


def test_a_different_learning_rate_is_a_different_run() -> None:
    assert a_run(train={"lr": 1e-3}).run_id != a_run(train={"lr": 2e-3}).run_id


def test_a_model_vocabulary_smaller_than_the_tasks_is_rejected() -> None:
    with pytest.raises(ConfigError, match=r"model\.vocab_size=8: smaller than the task's vocabulary \(16\)"):
        a_run(model={"vocab_size": 8, "d_model": 16, "n_heads": 2})


def test_a_sweep_expands_the_full_grid(make_sweep: MakeSweep, tiny_task: dict) -> None:
    sweep = make_sweep(
        tasks=[tiny_task, {**tiny_task, "vocab": 32}],
        mechanisms=[{"normaliser": "softmax"}, {"normaliser": "sigmoid"}],
        positions=["rope", "alibi"],
        widths=[16, 32],
        lrs=[1e-3, 3e-3],
        seeds=[0, 1, 2],
    )
    runs = sweep.runs()
    assert len(runs) == 2 * 2 * 2 * 2 * 2 * 3  # tasks × mechanisms × positions × widths × lrs × seeds
    points = {(r.task.vocab_size, r.mechanism, r.position, r.model.d_model, r.train.lr, r.seed) for r in runs}
    assert len(points) == len({r.run_id for r in runs}) == len(runs)


def test_sweep_runs_take_vocabulary_and_length_from_their_task(make_sweep: MakeSweep) -> None:
    sweep = make_sweep(tasks=[{"name": "mqar", "vocab": 24, "length": 20, "num_kv_pairs": 2}])
    assert {(r.model.vocab_size, r.model.max_seq_len) for r in sweep.runs()} == {(24, 20)}


def test_sweep_runs_carry_the_sweep_name(make_sweep: MakeSweep) -> None:
    assert {r.sweep for r in make_sweep(name="named").runs()} == {"named"}


def test_a_sweep_keeps_its_training_settings_except_the_learning_rate(make_sweep: MakeSweep) -> None:
    sweep = make_sweep(lrs=[5e-3], train=TrainConfig(steps=7, batch_size=3))
    assert {(r.train.steps, r.train.batch_size, r.train.lr) for r in sweep.runs()} == {(7, 3, 5e-3)}


@pytest.mark.parametrize("key", ["d_model", "vocab_size"])
def test_a_sweep_model_dict_may_not_set_what_the_axes_set(make_sweep: MakeSweep, key: str) -> None:
    with pytest.raises(ConfigError, match=rf"model\.{key}=32: is set by the sweep's axes"):
        make_sweep(model={"n_layers": 1, "n_heads": 2, key: 32})


def test_a_sweep_with_an_unknown_position_lists_the_known_ones(make_sweep: MakeSweep) -> None:
    with pytest.raises(ConfigError, match=r"'nosuch': unknown position \(allowed: .*rope"):
        make_sweep(positions=["nosuch"])


def test_a_sweep_needs_tasks() -> None:
    with pytest.raises(ConfigError, match="tasks"):
        Sweep(name="empty", tasks=[], mechanisms=[{}])
