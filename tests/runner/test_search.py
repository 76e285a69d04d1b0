"""The learning-rate search on a tiny real sweep: its rungs follow ``plan_halving``, promoted runs continue from
their training state, a missing state file costs time but not the result, and a finished search runs nothing."""

from __future__ import annotations

import math
import os
import statistics
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch

from attnlab.errors import ConfigError
from attnlab.runner.config import RunConfig, SearchConfig, Sweep
from attnlab.runner.execute import RunOutcome, execute, set_threads
from attnlab.runner.local import run_local
from attnlab.runner.search import run_search, search_groups
from attnlab.runner.store import Store
from attnlab.stats.halving import plan_halving
from attnlab.train.config import TrainConfig

MakeSweep = Callable[..., Sweep]
LRS = [1e-3, 3e-3, 1e-2, 3e-2]
TRAIN = TrainConfig(steps=40, batch_size=16, eval_every=10, eval_examples=64)


@pytest.fixture
def sweep(make_sweep: MakeSweep, tiny_task: dict) -> Sweep:
    # lrs left out: a search sets them (make_sweep's default would set them explicitly)
    return Sweep(
        name="tiny-search",
        tasks=[tiny_task],
        mechanisms=[{"normaliser": "softmax"}],
        widths=[16],
        seeds=[0, 1],
        model={"n_layers": 1, "n_heads": 2},
        train=TRAIN,
        search=SearchConfig(lrs=LRS, min_steps=10, eta=2),
    )


@contextmanager
def one_thread() -> Iterator[None]:
    """One torch thread (results repeat bitwise at a fixed thread count), then the suite's own count again."""
    before, env = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
    set_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
        if env is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = env


def run_in_process(sweep: Sweep, store: Store, outcomes: list[tuple[RunConfig, RunOutcome]] | None = None) -> list:
    def batch(runs: Any) -> None:
        on_done = None if outcomes is None else lambda r, o: outcomes.append((r, o))
        run_local(runs, store, workers=0, threads=1, on_done=on_done)  # bitwise repeatable at a fixed thread count

    return run_search(sweep, store, batch)


@pytest.fixture(scope="module")
def searched(tmp_path_factory: pytest.TempPathFactory, tiny_task: dict) -> tuple[Path, list, list]:
    """One search run to the end in this process: (its database, the outcomes in order, the finished plans)."""
    sweep = Sweep(
        name="tiny-search",
        tasks=[tiny_task],
        mechanisms=[{"normaliser": "softmax"}],
        widths=[16],
        seeds=[0, 1],
        model={"n_layers": 1, "n_heads": 2},
        train=TRAIN,
        search=SearchConfig(lrs=LRS, min_steps=10, eta=2),
    )
    db = tmp_path_factory.mktemp("search") / "results.sqlite"
    outcomes: list[tuple[RunConfig, RunOutcome]] = []
    with Store(db) as store, one_thread():
        plans = run_in_process(sweep, store, outcomes)
    return db, outcomes, plans


# --- configuration -------------------------------------------------------------------------------------------


def test_a_search_sets_the_learning_rates_so_a_sweep_may_not(sweep: Sweep) -> None:
    with pytest.raises(ConfigError, match=r"lrs=\[0.001\]: is set by search"):
        Sweep(**{**dict(sweep), "lrs": [1e-3]})


@pytest.mark.parametrize(
    ("search", "message"),
    [
        ({"lrs": LRS, "low": 1e-4, "min_steps": 10}, r"lrs=.*given with low / high / points"),
        ({"low": 1e-4, "high": 1e-2, "min_steps": 10}, r"low=0.0001: a grid needs low, high and points"),
        ({"lrs": [1e-3, 1e-3], "min_steps": 10}, r"must be distinct positive learning rates"),
        ({"low": 1e-2, "high": 1e-4, "points": 3, "min_steps": 10}, r"high=0.0001: must be above low"),
    ],
)
def test_a_search_grid_is_one_of_lrs_or_low_high_points(search: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        SearchConfig(**search)


@pytest.mark.parametrize(("min_steps", "message"), [(15, "is not an evaluation step"), (50, "is beyond the training")])
def test_a_search_starts_at_an_evaluation_step_within_the_run(sweep: Sweep, min_steps: int, message: str) -> None:
    with pytest.raises(ConfigError, match=rf"search.min_steps={min_steps}: {message}"):
        fields = {k: v for k, v in dict(sweep).items() if k != "lrs"}
        Sweep(**{**fields, "search": SearchConfig(lrs=LRS, min_steps=min_steps, eta=2)})


def test_a_log_grid_search_takes_log_grid_values() -> None:
    search = SearchConfig(low=1e-4, high=1e-2, points=5, min_steps=10)
    assert search.grid == (1e-4, 3.16e-4, 1e-3, 3.16e-3, 1e-2)


def test_a_search_sweeps_runs_are_its_first_rung(sweep: Sweep) -> None:  # explain, presets and suites list them
    runs = sweep.runs()
    assert sorted((r.train.lr, r.seed, r.train.stop_at) for r in runs) == sorted(
        (lr, seed, 10) for lr in LRS for seed in (0, 1)
    )


def test_the_searchs_last_rung_runs_are_the_plain_sweeps_runs(sweep: Sweep, make_sweep: MakeSweep) -> None:
    """A final-rung run has no stop_at: the same run (id) as the sweep without a search at that learning rate."""
    [group] = search_groups(sweep)
    plain = make_sweep(lrs=LRS, train=TRAIN, name="tiny-search")
    assert {group.run(lr, seed, TRAIN.steps).run_id for lr in LRS for seed in (0, 1)} == {
        r.run_id for r in plain.runs()
    }
    assert group.run(LRS[0], 0, 20).train.stop_at == 20  # an intermediate rung: stop_at < steps


# --- a search run to the end ---------------------------------------------------------------------------------


def test_the_database_holds_exactly_the_runs_of_the_plan(searched: tuple) -> None:
    db, _, [(group, plan)] = searched
    with Store(db) as store:
        stored = {r["run_id"] for r in store.runs()}
        recomputed = plan_halving(group.spec, group.results(store))
    scheduled = {group.run(*t.key).run_id for rung in recomputed.rungs for t in rung.trials}
    assert recomputed.finished and not recomputed.pending
    assert stored == scheduled
    assert plan.best_lr == recomputed.best_lr


def test_each_rung_keeps_the_best_learning_rates_of_the_one_before(searched: tuple) -> None:
    """Recomputed here from the stored metrics: the mean evaluation loss over seeds (the search's default ranking),
    best (lowest) first, ties to the smaller lr."""
    db, _, [(group, plan)] = searched
    with Store(db) as store:
        rows = store.runs()
    budgets, sizes = group.spec.budgets, group.spec.rung_sizes
    for index in range(1, len(budgets)):
        by_lr: dict[float, list[float]] = {}
        for row in rows:
            stop = RunConfig.model_validate_json(row["config"]).train.stop_at or TRAIN.steps
            if stop == budgets[index - 1]:
                by_lr.setdefault(row["lr"], []).append(row["final"]["loss"])
        best = sorted(by_lr, key=lambda lr: (statistics.fmean(by_lr[lr]), lr))[: sizes[index]]
        assert plan.rungs[index].lrs == tuple(sorted(best))


def test_promoted_runs_continue_from_the_previous_rungs_state(searched: tuple) -> None:
    _, outcomes, [(group, _)] = searched
    budgets = group.spec.budgets
    started = {(r.train.stop_at or TRAIN.steps): set() for r, _ in outcomes}
    for run, outcome in outcomes:
        steps = run.train.stop_at or TRAIN.steps
        started[steps].add(outcome.resumed_from)
    assert started == {budgets[0]: {0}, **{b: {budgets[i]} for i, b in enumerate(budgets[1:])}}


def test_a_promoted_run_has_the_whole_curve_of_its_uninterrupted_run(searched: tuple) -> None:
    db, _, [(group, plan)] = searched
    run = group.run(plan.best_lr, 1, TRAIN.steps)
    with one_thread():  # as the search ran
        whole = execute(run.canonical_json())  # from scratch, in one go
    with Store(db) as store:
        assert store.curves(run.run_id) == sorted(whole.curves, key=lambda c: (c[0], c[1]))
        [final] = [r["final"] for r in store.runs() if r["run_id"] == run.run_id]
    assert {k: v for k, v in final.items() if k != "train_s"} == {
        k: v for k, v in whole.final.items() if k != "train_s"
    }


def test_a_finished_search_keeps_every_runs_weights_and_no_training_state(searched: tuple) -> None:
    db, outcomes, _ = searched
    with Store(db) as store:
        assert all(store.checkpoint_path(run.run_id).is_file() for run, _ in outcomes)
        assert not any(store.state_path(run.run_id).exists() for run, _ in outcomes)


def test_a_finished_search_run_again_trains_nothing(searched: tuple, sweep: Sweep) -> None:
    db, _, _ = searched
    batches: list = []
    with Store(db) as store:
        plans = run_search(sweep, store, batches.append)
    assert batches == []
    assert all(plan.finished for _, plan in plans)


def test_a_missing_state_file_retrains_from_scratch_to_the_same_result(searched: tuple, tmp_path: Path) -> None:
    db, _, [(group, plan)] = searched
    first, promoted = group.run(plan.best_lr, 0, 10), group.run(plan.best_lr, 0, 20)
    outcomes: list[RunOutcome] = []
    with Store(tmp_path / "fresh.sqlite") as store, one_thread():
        run_local([first], store, workers=0, threads=1)
        assert store.resume_state(promoted)  # the state is there: the promoted run would continue from it
        store.state_path(first.run_id).unlink()
        assert store.resume_state(promoted) == b""
        run_local([promoted], store, workers=0, threads=1, on_done=lambda r, o: outcomes.append(o))
        again = (store.curves(promoted.run_id), store.outcomes([promoted.run_id])[promoted.run_id][1]["accuracy"])
    with Store(db) as store:
        searched_run = (
            store.curves(promoted.run_id),
            store.outcomes([promoted.run_id])[promoted.run_id][1]["accuracy"],
        )
    assert outcomes[0].resumed_from == 0
    assert again == searched_run


def test_failed_runs_are_results_and_the_search_goes_on(tmp_path: Path, sweep: Sweep) -> None:
    """A run that fails (here: every run at the largest learning rate, by a fake backend) is NaN for the plan: its
    learning rate ranks last and the search finishes without retrying it."""
    calls: list[int] = []
    with Store(tmp_path / "failing.sqlite") as store:

        def batch(runs: Any) -> None:
            calls.append(len(runs))
            store.enqueue(runs)
            for run in runs:
                if run.train.lr == max(LRS):
                    store.fail(run.run_id, "FloatingPointError: training loss is nan")
                else:
                    store.finish(run.run_id, {"loss": -run.train.lr}, [])  # a made-up loss: larger lr is better

        plans = run_search(sweep, store, batch)
    [(_, plan)] = plans
    assert plan.rungs[0].ranking is not None and plan.rungs[0].ranking[-1].lr == max(LRS)
    assert math.isnan(plan.rungs[0].ranking[-1].mean)
    assert plan.best_lr == 1e-2  # the largest that did not fail
    assert calls == [8, 4, 2]


# --- the command line ----------------------------------------------------------------------------------------


def cli_output(args: list[str]) -> tuple[int, str]:
    from typer.testing import CliRunner

    from attnlab.cli import app

    result = CliRunner().invoke(app, args)
    return result.exit_code, result.output


def test_search_status_of_a_sweep_without_a_search_is_one_line(tmp_path: Path) -> None:
    Store(tmp_path / "r.sqlite").close()
    code, output = cli_output(["search-status", "zoology-mqar", "--db", str(tmp_path / "r.sqlite")])
    assert (code, output.strip()) == (
        2,
        "error: sweep='zoology-mqar': has no learning-rate search (allowed: a sweep with search=SearchConfig(...))",
    )


def test_search_status_prints_each_rung_and_the_winner(searched: tuple, tmp_path: Path) -> None:
    db, _, [(_, plan)] = searched
    sweep_file = tmp_path / "tiny_search.py"
    sweep_file.write_text(
        "from attnlab.runner.config import SearchConfig, Sweep\nfrom attnlab.train.config import TrainConfig\n"
        "SWEEP = Sweep(name='tiny-search', tasks=[{'name': 'mqar', 'vocab': 16, 'length': 16, 'num_kv_pairs': 2}],"
        " mechanisms=[{'normaliser': 'softmax'}], widths=[16], seeds=[0, 1], model={'n_layers': 1, 'n_heads': 2},"
        " train=TrainConfig(steps=40, batch_size=16, eval_every=10, eval_examples=64),"
        f" search=SearchConfig(lrs={LRS}, min_steps=10, eta=2))\n"
    )
    code, output = cli_output(["search-status", str(sweep_file), "--db", str(db)])
    assert code == 0, output
    assert "rungs of 10 / 20 / 40 steps keep 4 → 2 → 1 learning rates (η=2)" in " ".join(output.split())
    assert f"best {plan.best_lr:g}" in output
    assert output.count("mqar softmax / rope d16") == 4  # three rungs and the winner


def test_rank_by_task_ranks_by_the_tasks_own_metric(tmp_path: Path, sweep: Sweep) -> None:
    """``rank_by="task"``: MQAR's accuracy (larger is better) decides, not the loss."""
    by_task = sweep.model_copy(update={"search": sweep.search.model_copy(update={"rank_by": "task"})})
    with Store(tmp_path / "task.sqlite") as store:

        def batch(runs: Any) -> None:
            store.enqueue(runs)
            for run in runs:  # the loss prefers the smallest lr, the accuracy the largest
                store.finish(run.run_id, {"accuracy": run.train.lr, "loss": run.train.lr}, [])

        [(_, plan)] = run_search(by_task, store, batch)
    assert plan.best_lr == max(LRS)
