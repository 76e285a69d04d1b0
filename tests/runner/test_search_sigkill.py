"""A learning-rate search killed with SIGKILL mid-way, then the same command again: no run repeated or lost.

The real CLI runs a small search (four learning rates × two seeds, three rungs of 30 / 60 / 120 steps) in a
subprocess, in-process (--workers 0: no pool to start each round); it is killed once the database shows the first rung
done and a later run under way, then run again to the end. A second database holds the same search run without
interruption. Module-scoped fixtures run each command once; each test checks one claim against what they recorded.
"""

from __future__ import annotations

import json
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

from attnlab.runner.search import search_groups
from attnlab.runner.store import Store
from attnlab.sweeps import load_sweep

REPO = Path(__file__).resolve().parents[2]
FIRST_RUNG = 8  # four learning rates × two seeds

SWEEP_FILE = """
from attnlab.runner.config import SearchConfig, Sweep
from attnlab.train.config import TrainConfig

SWEEP = Sweep(
    name="killed-search",
    tasks=[{"name": "mqar", "vocab": 16, "length": 16, "num_kv_pairs": 2}],
    mechanisms=[{"normaliser": "softmax"}],
    widths=[16],
    seeds=[0, 1],
    model={"n_layers": 1, "n_heads": 2},
    train=TrainConfig(steps=120, batch_size=32, eval_every=30, eval_examples=128),
    search=SearchConfig(lrs=[1e-3, 3e-3, 1e-2, 3e-2], min_steps=30, eta=2),
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


def curves(db: Path) -> dict[str, list[tuple]]:
    with closing(sqlite3.connect(db, timeout=30)) as conn:
        out: dict[str, list[tuple]] = {}
        for run_id, step, name, value in conn.execute("SELECT * FROM metrics ORDER BY run_id, step, name"):
            out.setdefault(run_id, []).append((step, name, value))
        return out


def command(sweep_file: Path, db: Path) -> list[str]:
    return [sys.executable, "-m", "attnlab.cli", "run", str(sweep_file), "--db", str(db), "--workers", "0",
            "--threads", "1"]  # fmt: skip


@dataclass
class Killed:
    db: Path
    sweep_file: Path
    after_kill: dict[str, dict]
    integrity: str
    after_resume: dict[str, dict]
    resume: subprocess.CompletedProcess


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def killed(tmp_path_factory: pytest.TempPathFactory) -> Killed:
    tmp = tmp_path_factory.mktemp("killed-search")
    sweep_file, db = tmp / "search_sweep.py", tmp / "results.sqlite"
    sweep_file.write_text(SWEEP_FILE)
    with open(tmp / "first.log", "w") as log:
        proc = subprocess.Popen(
            command(sweep_file, db), cwd=tmp, env=env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            deadline = time.monotonic() + 300
            while True:
                snapshot = rows(db).values()
                done = sum(r["status"] == "done" for r in snapshot)
                # past the first rung (a promoted run continues from a state), with a run under way
                if done > FIRST_RUNG and any(r["status"] == "running" for r in snapshot):
                    # freeze the command, then look again: the run may have finished between the read and now;
                    # kill only while one is under way, so the test does not depend on how long a run takes
                    os.killpg(proc.pid, signal.SIGSTOP)
                    if any(r["status"] == "running" for r in rows(db).values()):
                        break
                    os.killpg(proc.pid, signal.SIGCONT)
                assert proc.poll() is None, f"the search exited before it could be killed; see {log.name}"
                assert time.monotonic() < deadline, f"not past the first rung within 300 s: {done} done"
                time.sleep(0.02)
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)
        finally:
            with suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    after_kill = rows(db)
    with closing(sqlite3.connect(db)) as conn:
        integrity = conn.execute("PRAGMA integrity_check").fetchone()[0]
    resume = subprocess.run(command(sweep_file, db), cwd=tmp, env=env(), capture_output=True, text=True, timeout=600)
    return Killed(db, sweep_file, after_kill, integrity, rows(db), resume)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("whole-search")
    sweep_file, db = tmp / "search_sweep.py", tmp / "results.sqlite"
    sweep_file.write_text(SWEEP_FILE)
    done = subprocess.run(command(sweep_file, db), cwd=tmp, env=env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    return db


def status(snapshot: dict[str, dict], wanted: str) -> set[str]:
    return {run_id for run_id, row in snapshot.items() if row["status"] == wanted}


@pytest.mark.slow
def test_the_kill_left_one_run_under_way_and_an_intact_database(killed: Killed) -> None:
    assert killed.integrity == "ok"
    assert len(status(killed.after_kill, "running")) == 1
    assert len(status(killed.after_kill, "done")) > FIRST_RUNG


@pytest.mark.slow
def test_the_same_command_finishes_the_search(killed: Killed) -> None:
    assert killed.resume.returncode == 0, killed.resume.stdout + killed.resume.stderr
    assert status(killed.after_resume, "done") == set(killed.after_resume)


@pytest.mark.slow
def test_the_database_holds_exactly_the_runs_of_the_finished_plan(killed: Killed) -> None:
    [group] = search_groups(load_sweep(str(killed.sweep_file)))
    with Store(killed.db) as store:
        plan = group.plan(store)
    assert plan.finished
    assert set(killed.after_resume) == {group.run(*t.key).run_id for rung in plan.rungs for t in rung.trials}


@pytest.mark.slow
def test_no_run_finished_before_the_kill_was_repeated(killed: Killed) -> None:
    done_before = status(killed.after_kill, "done")
    before = {r: (1, killed.after_kill[r]["finished_at"]) for r in done_before}
    assert {
        r: (killed.after_resume[r]["attempts"], killed.after_resume[r]["finished_at"]) for r in done_before
    } == before


@pytest.mark.slow
def test_the_run_under_way_ran_again_and_every_other_run_ran_once(killed: Killed) -> None:
    [under_way] = status(killed.after_kill, "running")
    attempts = {run_id: row["attempts"] for run_id, row in killed.after_resume.items()}
    assert attempts == {run_id: 2 if run_id == under_way else 1 for run_id in killed.after_resume}


@pytest.mark.slow
def test_the_resumed_search_equals_the_uninterrupted_one(killed: Killed, uninterrupted: Path) -> None:
    """The same runs, bitwise the same final metrics (but the timing) and curves, so the same winner."""
    resumed, whole = killed.after_resume, rows(uninterrupted)
    assert set(resumed) == set(whole)

    def finals(snapshot: dict[str, dict]) -> dict[str, dict]:
        return {r: {k: v for k, v in json.loads(row["final"]).items() if k != "train_s"} for r, row in snapshot.items()}

    assert finals(resumed) == finals(whole)
    assert curves(killed.db) == curves(uninterrupted)


@pytest.mark.slow
def test_the_resumed_search_printed_its_winner(killed: Killed) -> None:
    assert "learning-rate search: the best learning rate per group" in killed.resume.stdout
    assert "continued from step" in killed.resume.stdout
