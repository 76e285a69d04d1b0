"""Suites of sweeps and grids that skip the points a mechanism cannot serve."""

from __future__ import annotations

import pytest

from attnlab.errors import ConfigError
from attnlab.runner.config import Sweep
from attnlab.runner.suite import Suite
from attnlab.sweeps import load_sweep
from attnlab.train.config import TrainConfig

TINY = TrainConfig(steps=2, batch_size=2, eval_every=2, eval_examples=2)


def _sweep(name: str, tasks: list[dict], skip: bool, mechanisms: list[dict] | None = None) -> Sweep:
    return Sweep(
        name=name,
        tasks=tasks,
        mechanisms=mechanisms or [{"normaliser": "softmax"}, {"normaliser": "based"}],
        widths=[16],
        model={"n_layers": 1, "n_heads": 2},
        train=TINY,
        skip_unsupported=skip,
    )


def test_an_unsupported_point_rejects_the_sweep_unless_skipping_is_asked_for() -> None:
    with pytest.raises(ConfigError, match=r"based.*does not support cross-attention"):
        _sweep("s", [{"name": "reversal"}], skip=False)
    sweep = _sweep("s", [{"name": "reversal"}], skip=True)
    assert [r.mechanism for r in sweep.runs()] == ["softmax"]
    (line,) = sweep.skipped()
    assert "reversal × based" in line and "does not support cross-attention" in line


def test_a_grid_with_nothing_supported_is_an_error() -> None:
    with pytest.raises(ConfigError, match="every point of the grid is unsupported"):
        _sweep("s", [{"name": "reversal"}], skip=True, mechanisms=[{"normaliser": "based"}])


def test_a_suite_is_the_union_of_its_parts_tagged_with_its_name() -> None:
    a = _sweep("a", [{"name": "mqar", "vocab": 16, "length": 16, "num_kv_pairs": 2}], skip=True)
    b = _sweep("b", [{"name": "reversal"}], skip=True)
    suite = Suite(name="both", parts=[a, b])
    runs = suite.runs()
    assert [r.run_id for r in runs] == [r.run_id for r in a.runs() + b.runs()]
    assert {r.sweep for r in runs} == {"both"}
    assert suite.skipped() == b.skipped()
    assert [t.name for t in suite.tasks] == ["mqar", "reversal"]


def test_parts_that_repeat_a_run_are_rejected() -> None:
    a = _sweep("a", [{"name": "mqar", "vocab": 16, "length": 16, "num_kv_pairs": 2}], skip=True)
    with pytest.raises(ConfigError, match="repeats run"):
        Suite(name="twice", parts=[a, a.model_copy(update={"name": "a2"})])


def test_the_standard_preset_covers_every_task_and_the_named_mechanisms() -> None:
    suite = load_sweep("standard")
    runs = suite.runs()
    assert {r.task.name for r in runs} >= {
        "mqar", "copying", "induction", "selective_copy", "passkey", "lm", "sorting", "reversal",
    }  # fmt: skip
    assert {r.model.mode for r in runs} == {"decoder", "encoder", "encoder_decoder"}
    mechanisms = {r.mechanism for r in runs}
    assert {"softmax", "sigmoid", "cog", "lssa", "linear_elu", "based"} <= mechanisms
    extrapolated = [r for r in runs if r.train.extrapolate]
    assert {r.task.name for r in extrapolated} == {"passkey", "lm"}
    assert {p for r in extrapolated for p in r.train.extrapolate_positions} == {"rope_ntk_dynamic"}
    assert {r.model.attention.label for r in runs if r.task.name == "reversal"} == mechanisms - {"based"}


def test_the_standard_preset_searches_every_part_over_three_seeds() -> None:
    from attnlab.runner.search import fixed_runs, search_groups

    suite = load_sweep("standard")
    assert not fixed_runs(suite)  # every part searches its learning rate
    groups = search_groups(suite)
    assert len(groups) == 53  # 9 tasks × 6 mechanisms, but Based sits out reversal
    assert {tuple(g.spec.seeds) for g in groups} == {(0, 1, 2)}
    assert {tuple(g.spec.lrs) for g in groups} == {(1e-3, 3e-3)}
    assert sum(g.planned_runs() for g in groups) == 53 * 9  # 2 rates × 3 seeds to the first rung, 3 continued
