"""A user's mistake through the command line: one line naming the field, the value and what is allowed; exit 2.

Each case was a traceback before the CLI had one error guard (``attnlab.cli.guard``). The line is checked whole
where its wording is attnlab's own, and for its parts where it quotes Python or SQLite.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from attnlab.cli import app
from attnlab.runner.config import Sweep
from attnlab.runner.store import Store
from attnlab.train.config import TrainConfig

runner = CliRunner()
REPO = Path(__file__).resolve().parents[2]
DB_ALLOWED = "(allowed: a results database written by attnlab, or a new file)"


@pytest.fixture(autouse=True)
def in_tmp_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every command runs in the test's own folder, so the paths in its error line are short and known."""
    monkeypatch.chdir(tmp_path)


def one_line_error(args: list[str]) -> str:
    """Run ``attnlab ARGS``; it must exit 2 with exactly one line of output, and no traceback."""
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    lines = result.output.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


@pytest.fixture
def results(tmp_path: Path) -> Path:
    """A results database holding the queued runs of one sweep named ``tiny`` (nothing trained)."""
    sweep = Sweep(
        name="tiny",
        tasks=[{"name": "mqar", "vocab": 16, "length": 16, "num_kv_pairs": 2}],
        mechanisms=[{"normaliser": "softmax"}],
        widths=[16],
        lrs=[1e-3],
        model={"n_layers": 1, "n_heads": 2},
        train=TrainConfig(steps=2, batch_size=2, eval_every=1, eval_examples=2),
    )
    db = tmp_path / "results.sqlite"
    with Store(db) as store:
        store.enqueue(sweep.runs())
    return db


def test_a_sweep_file_with_a_syntax_error_names_the_file_and_the_line(tmp_path: Path) -> None:
    (tmp_path / "broken.py").write_text("from attnlab.runner.config import Sweep\nSWEEP = Sweep(\n")
    line = one_line_error(["run", "broken.py", "--db", "results.sqlite"])
    assert line.startswith("error: sweep='broken.py:2': syntax error: ")
    assert line.endswith("(allowed: a Python file that defines SWEEP)")
    assert not (tmp_path / "results.sqlite").exists()


def test_a_sweep_file_that_raises_names_the_file_the_line_and_the_exception(tmp_path: Path) -> None:
    (tmp_path / "raises.py").write_text("import math\n\nSWEEP = math.nosuch\n")
    line = one_line_error(["run", "raises.py", "--db", "results.sqlite"])
    assert line.startswith("error: sweep='raises.py:3': raised AttributeError: ")
    assert "nosuch" in line and line.endswith("(allowed: a Python file that defines SWEEP)")


@pytest.mark.parametrize("command", ["leaderboard", "report", "export"])
def test_a_results_database_that_is_not_sqlite(tmp_path: Path, command: str) -> None:
    (tmp_path / "notes.sqlite").write_text("these are my notes, not a database\n" * 100)
    args = [command, "notes.sqlite", *(["runs.csv"] if command == "export" else [])]
    line = one_line_error(args)
    assert line == f"error: db='notes.sqlite': is not an SQLite database {DB_ALLOWED}"


def test_a_run_into_a_file_that_is_not_sqlite_leaves_it_alone(tmp_path: Path) -> None:
    text = "these are my notes, not a database\n" * 100
    (tmp_path / "notes.sqlite").write_text(text)
    line = one_line_error(["run", "quick", "--db", "notes.sqlite"])
    assert line == f"error: db='notes.sqlite': is not an SQLite database {DB_ALLOWED}"
    assert (tmp_path / "notes.sqlite").read_text() == text


@pytest.mark.parametrize("command", ["run", "leaderboard", "report", "export"])
def test_a_database_path_that_is_a_folder(tmp_path: Path, command: str) -> None:
    (tmp_path / "results.sqlite").mkdir()
    args = {
        "run": ["run", "quick", "--db", "results.sqlite"],
        "leaderboard": ["leaderboard", "results.sqlite"],
        "report": ["report", "results.sqlite"],
        "export": ["export", "results.sqlite", "runs.csv"],
    }[command]
    assert one_line_error(args) == f"error: db='results.sqlite': is a folder {DB_ALLOWED}"


def test_a_database_below_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "runs").write_text("a file where a folder should be")
    line = one_line_error(["run", "quick", "--db", "runs/results.sqlite"])
    assert line.startswith("error: db='runs/results.sqlite': cannot make its folder: ")


def test_an_sqlite_database_of_another_program_is_refused(tmp_path: Path) -> None:
    import sqlite3

    with sqlite3.connect(tmp_path / "other.sqlite") as conn:
        conn.execute("CREATE TABLE runs (name TEXT)")
    line = one_line_error(["leaderboard", "other.sqlite"])
    assert line.startswith("error: db='other.sqlite': an SQLite database of another program: table runs lacks ")
    assert "run_id" in line and line.endswith(DB_ALLOWED)


def test_a_missing_database_is_not_created_by_a_reading_command(tmp_path: Path) -> None:
    line = one_line_error(["report", "missing.sqlite"])
    assert line == "error: db='missing.sqlite': no such file (allowed: a results database written by attnlab run)"
    assert not (tmp_path / "missing.sqlite").exists()


@pytest.mark.parametrize(
    ("option", "value", "expected"),
    [
        ("--workers", "-3", "error: workers=-3: must not be negative (allowed: 0 (runs in this process) or more)"),
        ("--threads", "0", "error: threads=0: must be at least 1 (allowed: >= 1)"),
    ],
)
def test_a_bad_worker_or_thread_count_creates_no_database(
    tmp_path: Path, option: str, value: str, expected: str
) -> None:
    assert one_line_error(["run", "quick", option, value, "--db", "results.sqlite"]) == expected
    assert not (tmp_path / "results.sqlite").exists()


def test_a_report_folder_that_is_a_file_is_refused_before_the_sweep_runs(tmp_path: Path) -> None:
    (tmp_path / "report").write_text("not a folder")
    line = one_line_error(["run", "quick", "--report", "report", "--db", "results.sqlite"])
    assert line == "error: report='report': is a file (allowed: a folder (created when missing))"
    assert not (tmp_path / "results.sqlite").exists()


def test_a_report_out_folder_that_is_a_file(results: Path) -> None:
    (results.parent / "out").write_text("not a folder")
    line = one_line_error(["report", results.name, "--out", "out"])
    assert line == "error: out='out': is a file (allowed: a folder (created when missing))"


@pytest.mark.parametrize("command", ["leaderboard", "report", "export"])
def test_an_unknown_sweep_name_lists_the_sweeps_of_the_database(results: Path, command: str) -> None:
    args = [command, results.name, *(["runs.csv"] if command == "export" else []), "--sweep", "nosuch"]
    line = one_line_error(args)
    assert line == "error: sweep='nosuch': no runs of this sweep in results.sqlite (allowed: tiny)"


def test_an_export_to_a_folder_is_refused(results: Path) -> None:
    (results.parent / "runs.csv").mkdir()
    line = one_line_error(["export", results.name, "runs.csv"])
    assert line == "error: path='runs.csv': is a folder (allowed: a .csv or .parquet file)"


def test_an_inspect_out_folder_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "heads").write_text("not a folder")
    line = one_line_error(["inspect", "minilm", "--out", "heads"])
    assert line == "error: out='heads': is a file (allowed: a folder (created when missing))"


def test_inspect_takes_one_input(tmp_path: Path) -> None:
    line = one_line_error(["inspect", "minilm", "--text", "a b c", "--task", "induction"])
    assert line == "error: input='--text --task': give only one of --text, --file, --task"


def test_rich_markup_in_a_value_is_printed_as_text(tmp_path: Path) -> None:
    line = one_line_error(["run", "[bold]x[/bold]", "--db", "results.sqlite"])
    assert line.startswith("error: sweep='[bold]x[/bold]': not a preset nor a .py file (allowed: ")


def test_a_message_of_several_lines_is_joined_into_one(tmp_path: Path) -> None:
    (tmp_path / "raises.py").write_text('raise ValueError("first line\\nsecond line")\n')
    line = one_line_error(["run", "raises.py"])
    assert line.startswith("error: sweep='raises.py:1': raised ValueError: first line second line (allowed: ")


def test_the_installed_command_prints_the_line_on_stderr_and_exits_2(tmp_path: Path) -> None:
    """The real process: the line goes to stderr, nothing to stdout, and the status is 2."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    command = [sys.executable, "-m", "attnlab.cli", "run", "quick", "--workers", "-3", "--db", "results.sqlite"]
    proc = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    assert proc.stderr == "error: workers=-3: must not be negative (allowed: 0 (runs in this process) or more)\n"
