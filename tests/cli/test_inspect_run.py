"""``attnlab inspect RUN_ID``: a finished run's weights are stored and reload to the same model."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from attnlab.cli import app
from attnlab.runner.checkpoint_model import load_run
from attnlab.runner.config import Sweep
from attnlab.runner.local import run_local
from attnlab.runner.store import Store
from attnlab.train.config import TrainConfig
from attnlab.train.loop import evaluate

runner = CliRunner()


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    db = tmp_path_factory.mktemp("inspect") / "runs.sqlite"
    sweep = Sweep(
        name="t",
        tasks=[{"name": "induction", "vocab": 16, "half": 6}],
        mechanisms=[{"normaliser": "softmax"}],
        positions=["rope"],
        widths=[16],
        model={"n_layers": 2, "n_heads": 2, "mlp": False},
        train=TrainConfig(steps=30, batch_size=8, eval_every=30, eval_examples=32),
    )
    with Store(db) as store:
        run_local(sweep.runs(), store, workers=0)
    return db, sweep.runs()[0].run_id


def test_the_checkpoint_reproduces_the_stored_final_metrics(finished: tuple[Path, str]) -> None:
    db, run_id = finished
    with Store(db) as store:
        assert store.checkpoint_path(run_id).is_file()
        final = store.runs()[0]["final"]
    model, cfg = load_run(db, run_id)
    metrics = evaluate(model, cfg.task.build(cfg.seed).eval_batch(cfg.train.eval_examples), cfg.train)
    assert metrics["loss"] == pytest.approx(final["loss"], rel=1e-6)
    assert metrics["accuracy"] == pytest.approx(final["accuracy"], abs=1e-9)


def test_inspect_a_run_id_prints_its_head_table(finished: tuple[Path, str]) -> None:
    db, run_id = finished
    result = runner.invoke(app, ["inspect", run_id, "--db", str(db), "--top", "4"])
    assert result.exit_code == 0, result.output
    assert f"run {run_id}" in result.output
    assert "top 4 of 4 heads by induction" in result.output
    assert "first copy" in result.output and "second copy" in result.output


def test_inspect_an_unknown_name_says_where_it_looked(finished: tuple[Path, str]) -> None:
    db, _ = finished
    result = runner.invoke(app, ["inspect", "0123456789abcdef", "--db", str(db)])
    assert result.exit_code == 2
    assert "not a model, checkpoint folder or run id of" in result.output


def test_a_run_without_a_checkpoint_is_a_clear_error(finished: tuple[Path, str], tmp_path: Path) -> None:
    db, run_id = finished
    with Store(db) as store:
        path = store.checkpoint_path(run_id)
    moved = tmp_path / "weights.safetensors"
    path.rename(moved)
    try:
        result = runner.invoke(app, ["inspect", run_id, "--db", str(db)])
        assert result.exit_code == 2
        assert "has no checkpoint" in result.output
    finally:
        moved.rename(path)
