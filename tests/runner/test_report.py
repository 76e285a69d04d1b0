"""Reports: the leaderboard picks the best learning rate by mean accuracy over seeds; write_report writes
markdown with a leaderboard per task and a PNG of the accuracy curves."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from attnlab.report.markdown import write_report
from attnlab.report.tables import leaderboard
from attnlab.runner.config import Sweep
from attnlab.runner.store import Store


def row(lr: float, seed: int, accuracy: float, status: str = "done") -> dict[str, Any]:
    return {
        "task": "mqar",
        "mechanism": "softmax",
        "position": "rope",
        "width": 16,
        "lr": lr,
        "seed": seed,
        "status": status,
        "final": {"accuracy": accuracy, "loss": 1.0, "steps": 100.0} if status == "done" else {},
        "wall_s": 2.0,
    }


# lr 1e-3 has the single best run (0.9) but lr 3e-3 the best mean over seeds (0.8 against 0.7)
ROWS = [row(1e-3, 0, 0.9), row(1e-3, 1, 0.5), row(3e-3, 0, 0.8), row(3e-3, 1, 0.8)]


def test_the_leaderboard_picks_the_learning_rate_with_the_best_mean_over_seeds() -> None:
    [entry] = leaderboard(ROWS)
    assert entry.best_lr == 3e-3


def test_the_leaderboard_reports_the_mean_accuracy_at_the_best_learning_rate() -> None:
    [entry] = leaderboard(ROWS)
    assert (entry.accuracy, entry.seeds) == (pytest.approx(0.8), 2)


def test_the_leaderboard_ignores_failed_runs_when_choosing_but_counts_them() -> None:
    [entry] = leaderboard([*ROWS, row(1e-2, 0, 0.0, status="failed")])
    assert (entry.best_lr, entry.failed) == (3e-3, 1)


@pytest.fixture
def report(make_sweep: Callable[..., Sweep], tmp_path: Path) -> Path:
    """A report of the tiny sweep with made-up results: one run failed, the others finished."""
    runs = make_sweep().runs()
    with Store(tmp_path / "results.sqlite") as store:
        store.enqueue(runs)
        for i, run in enumerate(runs[:-1]):
            store.start(run.run_id)
            curves = [(10, "eval_accuracy", 0.1 * i), (20, "eval_accuracy", 0.2 * i)]
            store.finish(run.run_id, {"accuracy": 0.2 * i, "loss": 1.0, "steps": 20.0}, curves)
        store.start(runs[-1].run_id)
        store.fail(runs[-1].run_id, "FloatingPointError: training loss is nan at step 3\nTraceback ...")
        return write_report(store, tmp_path / "report", sweep="tiny")


def test_the_report_has_a_markdown_leaderboard_per_task(report: Path) -> None:
    text = report.read_text()
    assert re.search(r"## mqar\n\n[^\n]+\n\n\| task \| mechanism \| position \| width \| best lr \| accuracy \|", text)
    assert "| mqar | softmax | rope | 16 |" in text


def test_the_report_embeds_a_png_of_the_accuracy_curves(report: Path) -> None:
    png = report.parent / "mqar_accuracy.png"
    assert f"]({png.name})" in report.read_text()
    assert png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n") and png.stat().st_size > 1000


def test_the_report_lists_failed_runs_with_the_first_line_of_their_error(report: Path) -> None:
    assert "softmax / rope: FloatingPointError: training loss is nan at step 3\n" in report.read_text()
