"""``run_local``: in-process and process-pool sweeps, skipping finished runs, isolating failures."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from attnlab.report.tables import leaderboard
from attnlab.runner.config import Sweep
from attnlab.runner.local import SweepSummary, run_local
from attnlab.runner.store import Store
from attnlab.train import loop


def comparable(final: dict[str, float]) -> dict[str, float]:
    """Final metrics without wall-clock timings."""
    return {k: v for k, v in final.items() if k != "train_s"}


@pytest.fixture(scope="module")
def in_process(
    make_sweep: Callable[..., Sweep], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Sweep, Store]]:
    """The tiny sweep, run once in this process."""
    sweep = make_sweep()
    store = Store(tmp_path_factory.mktemp("in_process") / "results.sqlite")
    run_local(sweep.runs(), store, workers=0, threads=1)
    yield sweep, store
    store.close()


def test_an_in_process_sweep_finishes_every_run(in_process: tuple[Sweep, Store]) -> None:
    sweep, store = in_process
    statuses = {row["run_id"]: row["status"] for row in store.runs()}
    assert statuses == {run.run_id: "done" for run in sweep.runs()}


def test_an_in_process_sweep_trains_every_run_once(in_process: tuple[Sweep, Store]) -> None:
    _, store = in_process
    assert [row["attempts"] for row in store.runs()] == [1, 1, 1, 1]


def test_a_finished_sweep_has_a_leaderboard_entry(in_process: tuple[Sweep, Store]) -> None:
    _, store = in_process
    [entry] = leaderboard(store.runs(sweep="tiny"))
    assert (entry.task, entry.mechanism, entry.position, entry.width, entry.seeds) == ("mqar", "softmax", "rope", 16, 2)


def test_running_a_finished_sweep_again_skips_every_run(in_process: tuple[Sweep, Store]) -> None:
    sweep, store = in_process
    summary = run_local(sweep.runs(), store, workers=0, threads=1)
    assert summary == SweepSummary(total=4, skipped=4, done=0, failed=0)


def test_running_a_finished_sweep_again_trains_nothing(in_process: tuple[Sweep, Store]) -> None:
    sweep, store = in_process
    before = {row["run_id"]: (row["attempts"], row["finished_at"]) for row in store.runs()}
    run_local(sweep.runs(), store, workers=0, threads=1)
    assert {row["run_id"]: (row["attempts"], row["finished_at"]) for row in store.runs()} == before


@pytest.fixture
def store_with_a_failing_seed(
    make_sweep: Callable[..., Sweep], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Store]:
    """The tiny sweep run in-process, where every run with seed 1 raises during training."""
    real_train = loop.train

    def train_failing_seed_1(model_cfg, task_cfg, cfg, seed, on_eval=None):
        if seed == 1:
            raise FloatingPointError("training loss is nan at step 3")
        return real_train(model_cfg, task_cfg, cfg, seed, on_eval)

    monkeypatch.setattr(loop, "train", train_failing_seed_1)  # execute() imports it at call time
    with Store(tmp_path / "results.sqlite") as store:
        run_local(make_sweep().runs(), store, workers=0, threads=1)
        yield store


def test_a_run_that_raises_is_recorded_as_failed_with_its_error(store_with_a_failing_seed: Store) -> None:
    failed = store_with_a_failing_seed.runs(status="failed")
    assert [row["seed"] for row in failed] == [1, 1]
    assert all("FloatingPointError: training loss is nan at step 3" in row["error"] for row in failed)


def test_a_failing_run_does_not_stop_the_others(store_with_a_failing_seed: Store) -> None:
    done = store_with_a_failing_seed.runs(status="done")
    assert sorted((row["lr"], row["seed"]) for row in done) == [(1e-3, 0), (3e-3, 0)]


@pytest.fixture(scope="module")
def in_pool(make_sweep: Callable[..., Sweep], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    """The same tiny sweep on a real pool of two spawned worker processes."""
    store = Store(tmp_path_factory.mktemp("in_pool") / "results.sqlite")
    run_local(make_sweep().runs(), store, workers=2, threads=1)
    yield store
    store.close()


def test_a_process_pool_sweep_finishes_every_run_once(in_pool: Store) -> None:
    assert sorted((row["status"], row["attempts"]) for row in in_pool.runs()) == [("done", 1)] * 4


def test_a_process_pool_gives_the_same_final_metrics_as_in_process(
    in_pool: Store, in_process: tuple[Sweep, Store]
) -> None:
    _, reference = in_process
    expected = {row["run_id"]: comparable(row["final"]) for row in reference.runs()}
    assert {row["run_id"]: comparable(row["final"]) for row in in_pool.runs()} == expected
