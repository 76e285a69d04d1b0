"""The SQLite results store: idempotent enqueue, atomic finish, failures, requeue, WAL mode."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from attnlab.runner.config import RunConfig, Sweep
from attnlab.runner.store import Store


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store(tmp_path / "results.sqlite") as s:
        yield s


@pytest.fixture
def runs(make_sweep: Callable[..., Sweep]) -> list[RunConfig]:
    return make_sweep().runs()


def test_enqueueing_twice_keeps_one_row_per_run(store: Store, runs: list[RunConfig]) -> None:
    store.enqueue(runs)
    store.enqueue(runs)
    assert sorted(r["run_id"] for r in store.runs()) == sorted(r.run_id for r in runs)


def test_enqueueing_again_reports_no_new_runs(store: Store, runs: list[RunConfig]) -> None:
    assert (store.enqueue(runs), store.enqueue(runs)) == (len(runs), 0)


def test_enqueueing_again_keeps_the_status(store: Store, runs: list[RunConfig]) -> None:
    store.enqueue(runs)
    store.start(runs[0].run_id)
    store.finish(runs[0].run_id, {"accuracy": 1.0}, [])
    store.start(runs[1].run_id)
    store.enqueue(runs)
    assert [store.status(r.run_id) for r in runs[:3]] == ["done", "running", "queued"]


def test_finish_stores_the_curves_with_status_done(store: Store, runs: list[RunConfig]) -> None:
    run_id = runs[0].run_id
    store.enqueue(runs)
    store.start(run_id)
    curves = [(10, "eval_accuracy", 0.25), (10, "eval_loss", 2.0), (20, "eval_accuracy", 0.5)]
    store.finish(run_id, {"accuracy": 0.5}, curves)
    assert (store.status(run_id), store.curves(run_id)) == ("done", curves)


def test_finish_stores_the_final_metrics(store: Store, runs: list[RunConfig]) -> None:
    store.enqueue(runs)
    store.finish(runs[0].run_id, {"accuracy": 0.5, "loss": 1.25}, [])
    assert store.runs(status="done")[0]["final"] == {"accuracy": 0.5, "loss": 1.25}


def test_a_finish_that_fails_after_writing_curves_leaves_neither_curves_nor_done(
    store: Store, runs: list[RunConfig]
) -> None:
    run_id = runs[0].run_id
    store.enqueue(runs)
    store.start(run_id)
    unserialisable_final = {"accuracy": {0.25}}  # json.dumps fails after the curves are inserted
    with pytest.raises(TypeError):
        store.finish(run_id, unserialisable_final, [(10, "eval_accuracy", 0.25)])
    assert (store.status(run_id), store.curves(run_id)) == ("running", [])


def test_fail_records_the_error_text(store: Store, runs: list[RunConfig]) -> None:
    run_id = runs[0].run_id
    store.enqueue(runs)
    store.start(run_id)
    store.fail(run_id, "FloatingPointError: training loss is nan at step 3")
    [row] = store.runs(status="failed")
    assert (row["run_id"], row["error"]) == (run_id, "FloatingPointError: training loss is nan at step 3")


def test_requeue_puts_running_runs_back_in_the_queue(store: Store, runs: list[RunConfig]) -> None:
    store.enqueue(runs)
    store.start(runs[0].run_id)
    store.requeue_unfinished([runs[0].run_id])
    assert store.status(runs[0].run_id) == "queued"


def test_requeue_leaves_finished_runs_alone(store: Store, runs: list[RunConfig]) -> None:
    store.enqueue(runs)
    store.start(runs[0].run_id)
    store.finish(runs[0].run_id, {"accuracy": 1.0}, [(1, "eval_accuracy", 1.0)])
    store.requeue_unfinished([runs[0].run_id])
    assert store.status(runs[0].run_id) == "done"


def test_every_start_counts_an_attempt(store: Store, runs: list[RunConfig]) -> None:
    store.enqueue(runs)
    store.start(runs[0].run_id)
    store.requeue_unfinished([runs[0].run_id])
    store.start(runs[0].run_id)
    attempts = {row["run_id"]: row["attempts"] for row in store.runs()}
    assert attempts[runs[0].run_id] == 2


def test_the_database_is_in_wal_mode(store: Store) -> None:
    assert store.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_the_sweeps_are_listed_by_name(store: Store, make_sweep: Callable[..., Sweep]) -> None:
    store.enqueue(make_sweep(name="b").runs())
    store.enqueue(make_sweep(name="a", lrs=[1e-2]).runs())  # other runs: a run id does not include its sweep
    assert store.sweeps() == ["a", "b"]


def test_a_file_that_is_not_sqlite_is_refused_and_left_as_it_was(tmp_path: Path) -> None:
    from attnlab.errors import ConfigError

    path = tmp_path / "notes.sqlite"
    path.write_bytes(b"not a database\n" * 200)
    with pytest.raises(ConfigError, match=r"^db='.*notes\.sqlite': is not an SQLite database"):
        Store(path)
    assert path.read_bytes() == b"not a database\n" * 200


def test_a_results_database_of_this_schema_opens_again(tmp_path: Path, runs: list[RunConfig]) -> None:
    with Store(tmp_path / "results.sqlite") as first:
        first.enqueue(runs)
    with Store(tmp_path / "results.sqlite") as again:
        assert len(again.runs()) == len(runs)


def test_runs_of_one_group_that_differ_in_training_are_labelled_not_averaged_as_seeds(tmp_path, make_sweep) -> None:
    from attnlab.runner.store import label_variants

    plain = make_sweep(lrs=[1e-3], seeds=[0]).runs()[0]
    zloss = plain.model_copy(update={"train": plain.train.model_copy(update={"z_loss": 1e-4})})
    other_seed = plain.model_copy(update={"seed": 1})

    def rows(*runs):
        keys = {"task": "mqar", "mechanism": "softmax", "position": "rope", "width": 16}
        return [{**keys, "config": r.canonical_json()} for r in runs]

    labels = [r["mechanism"] for r in label_variants(rows(plain, zloss, other_seed))]
    assert labels == ["softmax[train.z_loss=default]", "softmax[train.z_loss=0.0001]", "softmax[train.z_loss=default]"]
    alone = label_variants(rows(plain, other_seed))  # seeds only: the plain name
    assert [r["mechanism"] for r in alone] == ["softmax", "softmax"]


def test_the_wall_time_of_a_sweep_sums_its_sittings(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = iter([100.0, 160.0, 1000.0, 1030.0, 1090.0, 5000.0])
    monkeypatch.setattr("attnlab.runner.store.time.time", lambda: next(clock))
    first = store.begin_sitting("s", workers=2, threads=1)  # 100
    store.touch_sitting(first)  # 160: then killed
    second = store.begin_sitting("s", workers=1, threads=2)  # 1000
    store.touch_sitting(second)  # 1030
    store.touch_sitting(second, "finished")  # 1090
    store.begin_sitting("other", workers=1, threads=1)  # 5000: another sweep's, not counted
    assert [(s["ended"], s["wall_s"]) for s in store.sittings("s")] == [(None, 60.0), ("finished", 90.0)]
    assert store.wall_time("s") == 150.0 and store.wall_time("other") == 0.0


def test_durations_read_as_hours_minutes_seconds() -> None:
    from attnlab.report.markdown import format_duration

    assert [format_duration(s) for s in (0, 59.6, 60, 3600, 5025)] == [
        "0 s",
        "1 min",
        "1 min",
        "1 h",
        "1 h 23 min 45 s",
    ]


def test_a_killed_sitting_counts_to_the_last_run_it_finished(
    store: Store, runs: list[RunConfig], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed between a run's finish and the sitting's touch: the run's finish still ends the sitting."""
    now = [100.0]
    monkeypatch.setattr("attnlab.runner.store.time.time", lambda: now[0])
    store.enqueue(runs[:1])
    sweep = runs[0].sweep
    first = store.begin_sitting(sweep, workers=1, threads=1)  # at 100
    now[0] = 110.0
    store.touch_sitting(first)
    now[0] = 150.0
    store.finish(runs[0].run_id, {"accuracy": 1.0}, [])  # then killed before the touch
    now[0] = 400.0
    store.begin_sitting(sweep, workers=1, threads=1)  # the next sitting
    assert [s["wall_s"] for s in store.sittings(sweep)] == [50.0, 0.0]
