"""Leaderboard statistics on hand-built rows with known answers: the t interval against scipy and by hand, the
paired test against the best with Holm's correction, a one-seed table's header, the learning-rate edge flag,
intermediate search rungs left out, and emergence steps and ranking."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest
from scipy import stats

from attnlab.errors import ConfigError
from attnlab.report.leaderboard_stats import DEFAULT_TARGET, final_rows
from attnlab.report.markdown import build_blocks
from attnlab.report.tables import (
    CI,
    EMERGED,
    VERSUS,
    cells,
    cli_columns,
    leaderboard,
    leaderboard_caption,
    leaderboard_columns,
)


def row(
    mechanism: str, seed: int, accuracy: float, lr: float = 1e-3, task: str = "mqar", **train: Any
) -> dict[str, Any]:
    """A finished run as ``Store.runs`` returns it; ``train`` fields go into its stored config."""
    config = {"train": {"steps": 1000, **train}} if train else {"train": {"steps": 1000}}
    return {
        "run_id": f"{task}-{mechanism}-{lr:g}-{seed}-{train.get('stop_at')}",
        "task": task,
        "mechanism": mechanism,
        "position": "rope",
        "width": 16,
        "lr": lr,
        "seed": seed,
        "status": "done",
        "final": {"accuracy": accuracy, "loss": 1.0 - accuracy, "steps": 1000.0},
        "wall_s": 1.0,
        "config": json.dumps(config),
        "sweep": "hand-built",
        "error": None,
    }


def entry_of(entries: list, mechanism: str) -> Any:
    [entry] = [e for e in entries if e.mechanism == mechanism]
    return entry


# --- the interval ---------------------------------------------------------------------------------------


def test_the_interval_is_students_t_over_seeds_as_scipy_computes_it() -> None:
    values = [0.91, 0.87, 0.95, 0.90]
    [entry] = leaderboard([row("softmax", s, v) for s, v in enumerate(values)])
    low, high = stats.t.interval(0.95, len(values) - 1, loc=np.mean(values), scale=stats.sem(values))
    assert (entry.interval.kind, entry.interval.n) == ("t", 4)
    assert (entry.interval.low, entry.interval.high) == (pytest.approx(low, abs=1e-12), pytest.approx(high, abs=1e-12))


def test_the_interval_is_clipped_to_what_the_metric_can_take() -> None:
    """[1.0, 1.0, 0.25] (one seed missed the transition): mean 0.75, s = 0.433, half-width 4.3027 · 0.433 / √3 =
    1.076, so the t interval [−0.326, 1.826] is shown as [0, 1]; its loss [0.0, 0.0, 0.75] is clipped at 0."""
    [entry] = leaderboard([row("softmax", s, v) for s, v in enumerate([1.0, 1.0, 0.25])])
    assert (entry.interval.low, entry.interval.high) == (0.0, 1.0)
    assert entry.interval.mean == pytest.approx(0.75)
    [lm] = leaderboard([row("softmax", s, v, task="lm") for s, v in enumerate([1.0, 1.0, 0.25])])
    assert lm.metric == "loss" and lm.interval.low == 0.0 and lm.interval.high == pytest.approx(0.25 + 1.0758, abs=1e-3)


def test_the_interval_cell_by_hand() -> None:
    """[0.5, 0.6, 0.7]: mean 0.6, s = 0.1, t(0.975, 2) = 4.302653, half-width 4.302653 · 0.1 / √3 = 0.248414."""
    [entry] = leaderboard([row("softmax", s, v) for s, v in enumerate([0.5, 0.6, 0.7])])
    columns = leaderboard_columns("accuracy", [entry])
    assert dict(zip(columns, cells(entry, columns), strict=True))[CI] == "[0.352, 0.848]"


def test_the_interval_is_of_the_ranking_metric_loss_for_lm() -> None:
    rows = [row("m", s, v, task="lm") for s, v in enumerate([0.5, 0.6, 0.7])]  # loss = 1 − accuracy
    [entry] = leaderboard(rows)
    assert (entry.metric, entry.interval.mean) == ("loss", pytest.approx(0.4))


def test_a_failed_seed_is_left_out_of_the_interval_and_counted() -> None:
    rows = [row("softmax", s, v) for s, v in enumerate([0.5, 0.6, 0.7])]
    rows.append(row("softmax", 3, 0.0) | {"status": "failed", "final": {}})
    [entry] = leaderboard(rows)
    assert (entry.interval.n, entry.failed, entry.seeds) == (3, 1, 3)


# --- against the best -------------------------------------------------------------------------------------

BEST = [0.95, 0.97, 0.96, 0.98]
NEAR = [0.94, 0.98, 0.95, 0.97]  # a little below on two seeds, above on two: no evidence
FAR = [0.30, 0.28, 0.31, 0.29]  # at chance


def three_mechanisms() -> list[dict[str, Any]]:
    scores = {"best": BEST, "near": NEAR, "far": FAR}
    return [row(name, seed, v) for name, values in scores.items() for seed, v in enumerate(values)]


def test_each_row_is_tested_against_the_best_with_holms_correction() -> None:
    entries = leaderboard(three_mechanisms())
    p_near = stats.ttest_rel(NEAR, BEST).pvalue
    p_far = stats.ttest_rel(FAR, BEST).pvalue
    # Holm over two tests: the smaller p times 2, the larger times 1 (and never below the first)
    expected_far, expected_near = min(1.0, 2 * p_far), max(min(1.0, 2 * p_far), p_near)
    assert p_far < p_near
    assert [e.mechanism for e in entries] == ["best", "near", "far"]
    assert entry_of(entries, "near").versus.p_holm == pytest.approx(expected_near, rel=1e-12)
    assert entry_of(entries, "far").versus.p_holm == pytest.approx(expected_far, rel=1e-12)


def test_the_vs_best_cells_say_best_tied_and_worse() -> None:
    entries = leaderboard(three_mechanisms())
    columns = leaderboard_columns("accuracy", entries)
    versus = [dict(zip(columns, cells(e, columns), strict=True))[VERSUS] for e in entries]
    p_near = max(min(1.0, 2 * stats.ttest_rel(FAR, BEST).pvalue), stats.ttest_rel(NEAR, BEST).pvalue)
    assert versus == ["best", f"tied p={p_near:.3f}", "worse p<0.001"]


def test_holm_counts_comparisons_within_a_task_not_across_tasks() -> None:
    """A second task's rows do not change the first task's adjusted p-values."""
    alone = entry_of(leaderboard(three_mechanisms()), "near").versus.p_holm
    other = [r | {"task": "induction", "run_id": r["run_id"] + "i"} for r in three_mechanisms()]
    both = [e for e in leaderboard(three_mechanisms() + other) if e.task == "mqar"]
    assert entry_of(both, "near").versus.p_holm == alone


def test_a_row_sharing_one_seed_with_the_best_is_untested() -> None:
    rows = [row("best", s, v) for s, v in enumerate(BEST)] + [row("lone", 7, 0.5), row("lone", 0, 0.4)]
    entries = leaderboard(rows)
    columns = leaderboard_columns("accuracy", entries)
    assert dict(zip(columns, cells(entry_of(entries, "lone"), columns), strict=True))[VERSUS] == (
        "untested (1 shared seed)"
    )


# --- one seed -------------------------------------------------------------------------------------------


def test_a_one_seed_table_says_so_in_its_header_and_shows_no_interval() -> None:
    entries = leaderboard([row("softmax", 0, 0.9), row("sigmoid", 0, 0.8)])
    assert leaderboard_caption(entries).startswith("One seed per row: no interval and no test")
    assert CI not in leaderboard_columns("accuracy", entries) and VERSUS not in cli_columns(entries)
    assert entries[0].interval.has_interval is False


def test_the_report_puts_the_one_seed_caption_above_the_table() -> None:
    blocks = build_blocks([row("softmax", 0, 0.9), row("sigmoid", 0, 0.8)], {}, "db")
    texts = [type(b).__name__ + ":" + ("".join(map(str, b.parts)) if hasattr(b, "parts") else "") for b in blocks]
    heading = next(i for i, b in enumerate(blocks) if type(b).__name__ == "Heading")
    assert texts[heading + 1].startswith("Paragraph:One seed per row") and texts[heading + 2] == "Table:"


def test_a_table_with_seeds_says_which_interval_in_its_caption() -> None:
    caption = leaderboard_caption(leaderboard(three_mechanisms()))
    assert "Student t over seeds" in caption and "Holm" in caption


# --- the learning-rate edge -----------------------------------------------------------------------------


def lr_grid(best: float, lrs: tuple[float, ...] = (1e-3, 3e-3, 1e-2)) -> list[dict[str, Any]]:
    return [row("softmax", s, 0.9 if lr == best else 0.5, lr=lr) for lr in lrs for s in (0, 1)]


@pytest.mark.parametrize(
    ("best", "cell"), [(1e-2, "0.01 ↑"), (1e-3, "0.001 ↓"), (3e-3, "0.003")], ids=["high", "low", "inside"]
)
def test_a_best_lr_at_the_edge_of_those_tried_is_flagged(best: float, cell: str) -> None:
    [entry] = leaderboard(lr_grid(best))
    columns = cli_columns([entry])
    assert dict(zip(columns, cells(entry, columns), strict=True))["best lr"] == cell


def test_one_lr_tried_is_no_edge() -> None:
    [entry] = leaderboard(lr_grid(1e-3, lrs=(1e-3,)))
    assert entry.lr_edge is None


def test_the_edge_caption_appears_only_with_a_flag() -> None:
    assert "↑ / ↓" in leaderboard_caption(leaderboard(lr_grid(1e-2)))
    assert "↑ / ↓" not in leaderboard_caption(leaderboard(lr_grid(3e-3)))


def test_a_failed_lr_counts_as_tried() -> None:
    rows = [*lr_grid(3e-3, lrs=(1e-3, 3e-3)), row("softmax", 0, 0.0, lr=1e-2) | {"status": "failed", "final": {}}]
    [entry] = leaderboard(rows)
    assert (entry.best_lr, entry.lr_edge) == (3e-3, None)


# --- intermediate rungs of a learning-rate search ----------------------------------------------------------


def test_final_rows_leaves_out_rows_stopped_before_their_steps() -> None:
    rows = [
        row("a", 0, 0.5, stop_at=100),  # a rung: stop_at < steps
        row("a", 1, 0.5, stop_at=1000),  # stopped at its full budget
        row("a", 2, 0.5, stop_at=None),
        row("a", 3, 0.5),  # no stop_at in its config
        row("a", 4, 0.5) | {"config": None},  # no config at all (a hand-built or foreign row)
    ]
    assert [r["seed"] for r in final_rows(rows)] == [1, 2, 3, 4]


def test_the_leaderboard_ignores_a_rung_even_when_it_scores_best() -> None:
    rows = [row("a", s, 0.6, lr=3e-3) for s in (0, 1)] + [row("a", s, 0.99, lr=1e-2, stop_at=300) for s in (0, 1)]
    [entry] = leaderboard(rows)
    assert (entry.best_lr, entry.accuracy, entry.seeds) == (3e-3, pytest.approx(0.6), 2)


def test_a_rung_learning_rate_counts_as_tried_for_the_edge() -> None:
    """Successive halving's last rung holds only the winner; the grid is in the rungs below it."""
    rows = [row("a", s, 0.6, lr=3e-3) for s in (0, 1)]
    rows += [row("a", s, 0.2, lr=lr, stop_at=100) for lr in (1e-3, 3e-3, 1e-2) for s in (0, 1)]
    [entry] = leaderboard(rows)
    assert (entry.lrs, entry.lr_edge) == ((1e-3, 3e-3, 1e-2), None)


# --- emergence ---------------------------------------------------------------------------------------------


def curve(accuracies: list[float], every: int = 100) -> list[tuple[int, str, float]]:
    """An accuracy evaluated every ``every`` steps, and a loss point the emergence step must not read."""
    return [(every * (i + 1), "eval_accuracy", a) for i, a in enumerate(accuracies)] + [(100, "eval_loss", 1.0)]


def emergence_rows() -> tuple[list[dict[str, Any]], dict[str, list[tuple[int, str, float]]]]:
    """``early`` reaches 0.99 at 200, 300 and never (median 300); ``late`` at 400 on every seed (median 400);
    ``late`` ends more accurate, so the two rankings differ."""
    histories = {
        "early": [[0.3, 0.995, 0.995, 0.991], [0.3, 0.5, 0.992, 0.993], [0.3, 0.4, 0.5, 0.9]],
        "late": [[0.3, 0.4, 0.5, 0.999], [0.3, 0.4, 0.6, 0.999], [0.3, 0.5, 0.5, 0.999]],
    }
    rows, curves = [], {}
    for name, runs in histories.items():
        for seed, accuracies in enumerate(runs):
            r = row(name, seed, accuracies[-1])
            rows.append(r)
            curves[r["run_id"]] = curve(accuracies)
    return rows, curves


def test_the_emergence_step_is_the_median_with_never_as_infinity() -> None:
    rows, curves = emergence_rows()
    entries = leaderboard(rows, curves=curves)
    early, late = entry_of(entries, "early").emergence, entry_of(entries, "late").emergence
    assert (early.median_step, early.n_reached, early.n) == (300.0, 2, 3)
    assert (late.median_step, late.n_reached) == (400.0, 3)


def test_the_emergence_column_and_caption() -> None:
    rows, curves = emergence_rows()
    entries = leaderboard(rows, curves=curves)
    columns = cli_columns(entries)
    assert [dict(zip(columns, cells(e, columns), strict=True))[EMERGED] for e in entries] == ["400 (3/3)", "300 (2/3)"]
    assert f"accuracy ≥ {DEFAULT_TARGET:g}" in leaderboard_caption(entries)


def test_rank_by_emergence_puts_the_earlier_median_first() -> None:
    rows, curves = emergence_rows()
    assert [e.mechanism for e in leaderboard(rows, curves=curves)] == ["late", "early"]  # by final accuracy
    assert [e.mechanism for e in leaderboard(rows, curves=curves, rank_by="emergence")] == ["early", "late"]


def test_never_reached_by_the_middle_seed_ranks_last() -> None:
    rows, curves = emergence_rows()
    for r in rows:
        if r["mechanism"] == "early" and r["seed"] == 1:
            curves[r["run_id"]] = curve([0.3, 0.4, 0.5, 0.6])
    entries = leaderboard(rows, curves=curves, rank_by="emergence")
    assert [e.mechanism for e in entries] == ["late", "early"]
    assert math.isinf(entry_of(entries, "early").emergence.median_step)


def test_the_target_is_the_runs_own_else_the_one_given() -> None:
    rows, curves = emergence_rows()
    own = [r | {"config": json.dumps({"train": {"steps": 1000, "target_accuracy": 0.45}})} for r in rows]
    assert entry_of(leaderboard(own, curves=curves), "late").emergence.median_step == 300.0
    assert entry_of(leaderboard(own, curves=curves, target=0.35), "late").emergence.median_step == 200.0


def test_a_task_without_a_sudden_transition_gets_no_emergence() -> None:
    rows, curves = emergence_rows()
    rows = [r | {"task": "sorting"} for r in rows]
    entries = leaderboard(rows, curves=curves, rank_by="emergence")
    assert [e.emergence for e in entries] == [None, None] and [e.mechanism for e in entries] == ["late", "early"]


def test_a_labelled_task_variant_is_known_by_its_registered_name() -> None:
    rows, curves = emergence_rows()
    rows = [r | {"task": "mqar[num_kv_pairs=8]", "task_name": "mqar"} for r in rows]
    assert all(e.emergence is not None for e in leaderboard(rows, curves=curves))


def test_without_curves_there_is_no_emergence_column() -> None:
    rows, _ = emergence_rows()
    assert EMERGED not in cli_columns(leaderboard(rows))


@pytest.mark.parametrize(("field", "kwargs"), [("rank_by", {"rank_by": "speed"}), ("target", {"target": 1.5})])
def test_a_bad_ranking_or_target_is_one_line_naming_it(field: str, kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigError) as err:
        leaderboard([row("a", 0, 0.5)], **kwargs)
    assert err.value.field == field and "\n" not in str(err.value)


def test_a_continued_run_finds_its_transition_in_the_rung_below() -> None:
    """The last rung's row holds steps 400–600 only; the rung it continued from reached 0.99 at step 200."""
    final = row("a", 0, 0.999)
    rung = row("a", 0, 0.995, stop_at=300)
    other_seed = row("a", 1, 0.999, stop_at=300)  # another run: its curve must not be borrowed
    curves = {
        final["run_id"]: [(400, "eval_accuracy", 0.999), (500, "eval_accuracy", 0.999), (600, "eval_accuracy", 0.999)],
        rung["run_id"]: [(100, "eval_accuracy", 0.3), (200, "eval_accuracy", 0.995), (300, "eval_accuracy", 0.995)],
        other_seed["run_id"]: [(100, "eval_accuracy", 0.999)],
    }
    [entry] = leaderboard([final, rung, other_seed], curves=curves)
    assert (entry.emergence.median_step, entry.seeds) == (200.0, 1)
