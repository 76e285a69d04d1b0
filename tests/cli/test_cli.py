"""The command line, driven in-process with typer's CliRunner."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from attnlab.attention import HEADS, NORMALISERS
from attnlab.cli import app
from attnlab.position import POSITIONS
from attnlab.sweeps import preset_names

runner = CliRunner()


@pytest.fixture(scope="module")
def zoo_names() -> set[str]:
    """The first cell of every row of the tables ``attnlab zoo`` prints."""
    result = runner.invoke(app, ["zoo"])
    assert result.exit_code == 0, result.output
    return {line.split("│")[1].strip() for line in result.output.splitlines() if line.count("│") > 2}


@pytest.mark.parametrize("name", [*NORMALISERS.names(), *HEADS.names(), *POSITIONS.names()])
def test_zoo_lists_every_registered_name(zoo_names: set[str], name: str) -> None:
    assert name in zoo_names


def test_running_an_unknown_preset_exits_2_naming_the_presets(tmp_path: Path) -> None:
    result = runner.invoke(app, ["run", "nosuch", "--db", str(tmp_path / "results.sqlite")])
    allowed = ", ".join(preset_names())  # every preset module of attnlab.sweeps
    expected = f"error: sweep='nosuch': not a preset nor a .py file (allowed: {allowed})\n"
    assert (result.exit_code, result.output) == (2, expected)


def test_an_unknown_preset_creates_no_database(tmp_path: Path) -> None:
    runner.invoke(app, ["run", "nosuch", "--db", str(tmp_path / "results.sqlite")])
    assert not (tmp_path / "results.sqlite").exists()


def test_the_leaderboard_of_a_missing_database_exits_2(tmp_path: Path) -> None:
    result = runner.invoke(app, ["leaderboard", str(tmp_path / "missing.sqlite")])
    assert result.exit_code == 2 and "missing.sqlite" in result.output and "no such file" in result.output


def test_the_leaderboard_prints_bracketed_task_labels_as_text(tmp_path: Path) -> None:
    """Two settings of one task are labelled ``mqar[num_kv_pairs=…]``; rich must not eat that as markup."""
    from attnlab.runner.config import Sweep
    from attnlab.runner.store import Store
    from attnlab.train.config import TrainConfig

    tasks = [{"name": "mqar", "vocab": 16, "length": 16, "num_kv_pairs": n} for n in (2, 3)]
    sweep = Sweep(
        name="labels",
        tasks=tasks,
        mechanisms=[{"normaliser": "softmax"}],
        widths=[16],
        lrs=[1e-3],
        seeds=[0],
        model={"n_layers": 1, "n_heads": 2},
        train=TrainConfig(steps=2, batch_size=2, eval_every=1, eval_examples=2),
    )
    db = tmp_path / "results.sqlite"
    with Store(db) as store:
        store.enqueue(sweep.runs())
        for run in sweep.runs():
            store.finish(run.run_id, {"accuracy": 0.5, "loss": 1.0}, [])
    result = runner.invoke(app, ["leaderboard", str(db)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "mqar[num_kv_pairs=2]" in result.output and "mqar[num_kv_pairs=3]" in result.output
