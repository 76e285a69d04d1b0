"""Kill a running sweep (SIGKILL, or Ctrl-C as SIGINT to its process group), then run the same command again.

The acceptance test of the runner: finished runs are never repeated, the interrupted run is re-run, and the
database stays consistent. Each scenario runs the real CLI in a subprocess once (module-scoped fixtures) and
the tests below check one claim each against what it recorded.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing, suppress
from dataclasses import dataclass
from pathlib import Path

import pytest

from attnlab.runner.store import Store

REPO = Path(__file__).resolve().parents[2]
STEPS, EVAL_EVERY = 150, 50  # about a second per run on one thread
CURVE_ROWS = (STEPS // EVAL_EVERY) * 3  # train_loss, eval_loss, eval_accuracy at every evaluation

SWEEP_FILE = f"""
from attnlab.runner.config import Sweep
from attnlab.train.config import TrainConfig

SWEEP = Sweep(
    name="interrupted",
    tasks=[{{"name": "mqar", "vocab": 16, "length": 16, "num_kv_pairs": 2}}],
    mechanisms=[{{"normaliser": "softmax"}}],
    widths=[16],
    lrs=[1e-3, 2e-3],
    seeds=[0, 1],
    model={{"n_layers": 1, "n_heads": 2}},
    train=TrainConfig(steps={STEPS}, batch_size=32, eval_every={EVAL_EVERY}, eval_examples=128),
)
"""


def rows(db: Path) -> dict[str, dict]:
    """run_id → the run's row, read through a connection of our own."""
    if not db.exists():
        return {}
    with closing(sqlite3.connect(db, timeout=30)) as conn:
        conn.row_factory = sqlite3.Row
        try:
            return {r["run_id"]: dict(r) for r in conn.execute("SELECT * FROM runs")}
        except sqlite3.OperationalError:  # the CLI has not created the schema yet
            return {}


def query(db: Path, sql: str) -> list[tuple]:
    with closing(sqlite3.connect(db, timeout=30)) as conn:
        return conn.execute(sql).fetchall()


@dataclass
class Scenario:
    db: Path
    returncode: int  # of the interrupted command
    after_interrupt: dict[str, dict]
    integrity: str
    curve_rows_after_interrupt: dict[str, int]
    after_resume: dict[str, dict]
    resume_returncode: int
    resume_output: str


def interrupt_and_resume(tmp_path: Path, sig: signal.Signals) -> Scenario:
    sweep_file, db = tmp_path / "interrupted_sweep.py", tmp_path / "results.sqlite"
    sweep_file.write_text(SWEEP_FILE)
    command = [sys.executable, "-m", "attnlab.cli", "run", str(sweep_file), "--db", str(db), "--workers", "1"]
    command += ["--threads", "1"]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    with open(tmp_path / "first.log", "w") as log:
        # a session of its own, so a signal to its process group reaches the pool's worker too (as Ctrl-C does)
        proc = subprocess.Popen(
            command, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            deadline = time.monotonic() + 120
            while True:
                snapshot = rows(db).values()
                statuses = [r["status"] for r in snapshot]
                # kill well inside a run (not between one run's finish and the next one's start)
                if "done" in statuses and any(
                    r["started_at"] < time.time() - 0.2 for r in snapshot if r["status"] == "running"
                ):
                    break
                assert proc.poll() is None, f"the sweep exited before it could be interrupted; see {log.name}"
                assert time.monotonic() < deadline, f"no run finished within 120 s; statuses {statuses}"
                time.sleep(0.05)
            os.killpg(proc.pid, sig)
            returncode = proc.wait(timeout=60)
        finally:
            with suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # whatever of our process group is still alive
            proc.wait()
    after_interrupt = rows(db)
    integrity = query(db, "PRAGMA integrity_check")[0][0]
    curve_rows = dict(query(db, "SELECT run_id, COUNT(*) FROM metrics GROUP BY run_id"))
    resumed = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    return Scenario(
        db, returncode, after_interrupt, integrity, curve_rows, rows(db), resumed.returncode, resumed.stdout
    )


def with_status(snapshot: dict[str, dict], status: str) -> set[str]:
    return {run_id for run_id, row in snapshot.items() if row["status"] == status}


def in_flight(snapshot: dict[str, dict]) -> str:
    """The one run that had started but not finished when the sweep was interrupted."""
    [run_id] = [run_id for run_id, row in snapshot.items() if row["attempts"] == 1 and row["status"] != "done"]
    return run_id


def attempts_and_finish_times(snapshot: dict[str, dict], run_ids: set[str]) -> dict[str, tuple[int, float]]:
    return {run_id: (snapshot[run_id]["attempts"], snapshot[run_id]["finished_at"]) for run_id in run_ids}


# --- SIGKILL: no chance to clean up -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def killed(tmp_path_factory: pytest.TempPathFactory) -> Scenario:
    return interrupt_and_resume(tmp_path_factory.mktemp("sigkill"), signal.SIGKILL)


@pytest.mark.slow
def test_after_sigkill_the_database_passes_its_integrity_check(killed: Scenario) -> None:
    assert killed.integrity == "ok"


@pytest.mark.slow
def test_after_sigkill_the_in_flight_run_is_still_marked_running(killed: Scenario) -> None:
    assert killed.after_interrupt[in_flight(killed.after_interrupt)]["status"] == "running"


@pytest.mark.slow
def test_after_sigkill_finished_runs_have_all_their_curves(killed: Scenario) -> None:
    done = with_status(killed.after_interrupt, "done")
    assert done
    assert {run_id: killed.curve_rows_after_interrupt.get(run_id) for run_id in done} == dict.fromkeys(done, CURVE_ROWS)


@pytest.mark.slow
def test_after_sigkill_the_same_command_finishes_the_sweep(killed: Scenario) -> None:
    outcome = (killed.resume_returncode, with_status(killed.after_resume, "done"))
    assert outcome == (0, set(killed.after_interrupt)), killed.resume_output


@pytest.mark.slow
def test_after_sigkill_runs_finished_before_the_kill_are_not_repeated(killed: Scenario) -> None:
    done_before = with_status(killed.after_interrupt, "done")
    once_unchanged = {run_id: (1, killed.after_interrupt[run_id]["finished_at"]) for run_id in done_before}
    assert attempts_and_finish_times(killed.after_resume, done_before) == once_unchanged


@pytest.mark.slow
def test_after_sigkill_the_interrupted_run_is_run_again(killed: Scenario) -> None:
    assert killed.after_resume[in_flight(killed.after_interrupt)]["attempts"] == 2


@pytest.mark.slow
def test_after_sigkill_and_resume_every_run_has_one_curve_point_per_step_and_metric(killed: Scenario) -> None:
    per_run = query(killed.db, "SELECT run_id, COUNT(*), COUNT(DISTINCT step || ' ' || name) FROM metrics GROUP BY 1")
    assert sorted(per_run) == sorted((run_id, CURVE_ROWS, CURVE_ROWS) for run_id in killed.after_resume)


# --- SIGINT (Ctrl-C): the CLI puts the in-flight run back in the queue and exits 130 --------------------------


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory: pytest.TempPathFactory) -> Scenario:
    return interrupt_and_resume(tmp_path_factory.mktemp("sigint"), signal.SIGINT)


@pytest.mark.slow
def test_ctrl_c_exits_with_code_130(interrupted: Scenario) -> None:
    assert interrupted.returncode == 130


@pytest.mark.slow
def test_ctrl_c_puts_the_in_flight_run_back_in_the_queue(interrupted: Scenario) -> None:
    assert interrupted.after_interrupt[in_flight(interrupted.after_interrupt)]["status"] == "queued"


@pytest.mark.slow
def test_after_ctrl_c_the_same_command_finishes_the_sweep(interrupted: Scenario) -> None:
    outcome = (interrupted.resume_returncode, with_status(interrupted.after_resume, "done"))
    assert outcome == (0, set(interrupted.after_interrupt)), interrupted.resume_output


@pytest.mark.slow
def test_after_ctrl_c_runs_finished_before_the_interrupt_are_not_repeated(interrupted: Scenario) -> None:
    done_before = with_status(interrupted.after_interrupt, "done")
    once_unchanged = {run_id: (1, interrupted.after_interrupt[run_id]["finished_at"]) for run_id in done_before}
    assert attempts_and_finish_times(interrupted.after_resume, done_before) == once_unchanged


@pytest.mark.slow
def test_after_ctrl_c_the_interrupted_run_is_run_again(interrupted: Scenario) -> None:
    assert interrupted.after_resume[in_flight(interrupted.after_interrupt)]["attempts"] == 2


# --- sittings: the wall time of a sweep run in several sittings ---------------------------------------------


def sittings(db: Path) -> list[tuple]:
    return query(db, "SELECT ended, started_at, finished_at FROM sittings ORDER BY sitting_id")


@pytest.mark.slow
def test_a_killed_sitting_ends_at_its_last_finished_run(killed: Scenario) -> None:
    (first_end, first_start, _), (second_end, second_start, _) = sittings(killed.db)
    last_done = max(r["finished_at"] for r in killed.after_interrupt.values() if r["status"] == "done")
    assert (first_end, second_end) == (None, "finished")
    with Store(killed.db) as store:
        first = store.sittings()[0]
    end = first_start + first["wall_s"]
    assert last_done <= end <= second_start  # at least to its last finished run, never into the next sitting


@pytest.mark.slow
def test_an_interrupted_sitting_says_so_and_the_total_is_printed(interrupted: Scenario) -> None:
    assert [row[0] for row in sittings(interrupted.db)] == ["interrupted", "finished"]
    assert "in 2 sitting(s)" in interrupted.resume_output
    assert "interrupted" in interrupted.resume_output.split("wall time of sweep interrupted:")[1]
