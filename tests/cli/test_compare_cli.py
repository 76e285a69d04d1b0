"""``attnlab compare DB A B`` and the leaderboard's statistics through the command line (typer's CliRunner), on
results databases filled with made-up finals: the printed difference, interval and p-value against scipy, the
one-line errors, a one-seed leaderboard's title and ``--rank-by emergence``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import stats
from typer.testing import CliRunner

from attnlab.cli import app
from attnlab.runner.config import Sweep
from attnlab.runner.store import Store
from attnlab.train.config import TrainConfig

runner = CliRunner()

SOFTMAX = {0: 0.95, 1: 0.97, 2: 0.90}
SIGMOID = {0: 0.60, 1: 0.75, 2: 0.70}


def sweep(mechanisms: list[str], seeds: list[int], name: str = "s", lrs: tuple[float, ...] = (1e-3,)) -> Sweep:
    return Sweep(
        name=name,
        tasks=[{"name": "mqar", "vocab": 16, "length": 16, "num_kv_pairs": 2}],
        mechanisms=[{"normaliser": m} for m in mechanisms],
        widths=[16],
        lrs=list(lrs),
        seeds=seeds,
        model={"n_layers": 1, "n_heads": 2},
        train=TrainConfig(steps=400, batch_size=2, eval_every=100, eval_examples=2, target_accuracy=0.9),
    )


def fill(
    db: Path, sweeps: list[Sweep], accuracy: dict[str, dict[int, float]], reach: dict[str, int] | None = None
) -> Path:
    """Each run's accuracy is 0.3 until step ``reach[mechanism]`` (default 100), then ``accuracy[mechanism][seed]``;
    evaluations every 100 steps to 400."""
    with Store(db) as store:
        for s in sweeps:
            store.enqueue(s.runs())
            for run in s.runs():
                value = accuracy[run.mechanism][run.seed]
                at = (reach or {}).get(run.mechanism, 100)
                curve = [(t, "eval_accuracy", value if t >= at else 0.3) for t in range(100, 500, 100)]
                store.finish(run.run_id, {"accuracy": value, "loss": 1 - value, "steps": 400.0}, curve)
    return db


@pytest.fixture(scope="module")
def paired(tmp_path_factory: pytest.TempPathFactory) -> Path:
    db = tmp_path_factory.mktemp("compare") / "results.sqlite"
    return fill(db, [sweep(["softmax", "sigmoid"], [0, 1, 2])], {"softmax": SOFTMAX, "sigmoid": SIGMOID})


def test_compare_prints_the_paired_difference_its_interval_and_p_value(paired: Path) -> None:
    result = runner.invoke(app, ["compare", str(paired), "softmax", "sigmoid"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    a, b = list(SOFTMAX.values()), list(SIGMOID.values())
    d = np.subtract(a, b)
    low, high = stats.t.interval(0.95, 2, loc=d.mean(), scale=stats.sem(d))
    p = stats.ttest_rel(a, b).pvalue
    [line] = [line for line in result.output.splitlines() if line.lstrip().startswith("mqar")]
    assert line.split() == [
        "mqar", "rope", "16", "accuracy", "0.001", "0.001", "3",
        f"{d.mean():.3f}", f"[{low:.3f},", f"{high:.3f}]", f"{p:.3f}", f"{p:.3f}",
    ]  # fmt: skip


def test_compare_says_what_its_numbers_are(paired: Path) -> None:
    result = runner.invoke(app, ["compare", str(paired), "softmax", "sigmoid"])
    text = " ".join(result.output.split())
    assert "softmax − sigmoid, each at its best learning rate" in text and "Student-t" in text


def test_an_unknown_mechanism_is_one_line_listing_those_present(paired: Path) -> None:
    result = runner.invoke(app, ["compare", str(paired), "softmax", "relu"])
    expected = "error: B='relu': no runs of this mechanism (allowed: sigmoid, softmax)\n"
    assert (result.exit_code, result.output) == (2, expected)


def test_a_mechanism_against_itself_is_refused(paired: Path) -> None:
    result = runner.invoke(app, ["compare", str(paired), "softmax", "softmax"])
    assert (result.exit_code, result.output) == (2, "error: B='softmax': is A itself (allowed: sigmoid)\n")


def test_an_lr_neither_ran_is_one_line_listing_those_they_ran(paired: Path) -> None:
    result = runner.invoke(app, ["compare", str(paired), "softmax", "sigmoid", "--lr", "0.5"])
    expected = "error: lr=0.5: no finished run of softmax or sigmoid at this learning rate (allowed: 0.001)\n"
    assert (result.exit_code, result.output) == (2, expected)


def test_a_metric_neither_reports_is_one_line(paired: Path) -> None:
    result = runner.invoke(app, ["compare", str(paired), "softmax", "sigmoid", "--metric", "bleu"])
    assert result.exit_code == 2 and result.output.startswith("error: metric='bleu': no finished run")


def test_no_shared_seed_is_one_line_naming_the_seeds_of_each(tmp_path: Path) -> None:
    db = fill(
        tmp_path / "apart.sqlite",
        [sweep(["softmax"], [0, 1], "a"), sweep(["sigmoid"], [2], "b")],
        {"softmax": SOFTMAX, "sigmoid": SIGMOID},
    )
    result = runner.invoke(app, ["compare", str(db), "softmax", "sigmoid"])
    expected = (
        "error: B='sigmoid': shares no finished seed with softmax on any task (softmax: seeds 0, 1; sigmoid: seeds 2)\n"
    )
    assert (result.exit_code, result.output) == (2, expected)


def test_the_leaderboard_shows_intervals_tests_and_emergence(paired: Path) -> None:
    result = runner.invoke(app, ["leaderboard", str(paired)])
    assert result.exit_code == 0, result.output
    header = next(line for line in result.output.splitlines() if "mechanism" in line).split()
    assert header[-7:] == ["seeds", "vs", "best", "emerged", "at", "steps", "s/run"]
    assert "95%" in header and "mean over seeds" in result.output


def test_a_one_seed_leaderboard_says_so_in_its_title(tmp_path: Path) -> None:
    db = fill(tmp_path / "one.sqlite", [sweep(["softmax", "sigmoid"], [0])], {"softmax": SOFTMAX, "sigmoid": SIGMOID})
    result = runner.invoke(app, ["leaderboard", str(db)])
    assert result.output.startswith("leaderboard (best over learning rates, one seed per row, no intervals)")
    assert "95% CI" not in result.output and "One seed per row" in result.output


def test_rank_by_emergence_from_the_command_line(tmp_path: Path) -> None:
    """softmax ends more accurate but reaches its target (0.9, the runs' own) at step 400; sigmoid at 100."""
    accuracy = {"softmax": {0: 0.99, 1: 0.99, 2: 0.98}, "sigmoid": {0: 0.95, 1: 0.94, 2: 0.96}}
    db = fill(tmp_path / "emerge.sqlite", [sweep(["softmax", "sigmoid"], [0, 1, 2])], accuracy, {"softmax": 400})
    by_score = runner.invoke(app, ["leaderboard", str(db)])
    by_emergence = runner.invoke(app, ["leaderboard", str(db), "--rank-by", "emergence"])

    def order(output: str) -> list[str]:
        return [line.split()[1] for line in output.splitlines() if line.lstrip().startswith("mqar")]

    assert (order(by_score.output), order(by_emergence.output)) == (["softmax", "sigmoid"], ["sigmoid", "softmax"])
    assert "100 (3/3)" in by_emergence.output and "400 (3/3)" in by_emergence.output


def test_a_higher_target_than_the_runs_reached_is_never(paired: Path) -> None:
    result = runner.invoke(app, ["leaderboard", str(paired), "--target", "0.99"])
    assert "never (0/3)" in result.output and "accuracy ≥ 0.99" in " ".join(result.output.split())


def test_a_bad_rank_by_is_one_line(paired: Path) -> None:
    result = runner.invoke(app, ["leaderboard", str(paired), "--rank-by", "speed"])
    assert (result.exit_code, result.output) == (
        2,
        "error: rank_by='speed': is not a ranking (allowed: score, emergence)\n",
    )


def test_no_common_task_is_one_line_naming_what_a_ran(tmp_path: Path) -> None:
    wide = sweep(["sigmoid"], [0]).model_copy(update={"widths": [32]})
    db = fill(tmp_path / "apart.sqlite", [sweep(["softmax"], [0]), wide], {"softmax": SOFTMAX, "sigmoid": SIGMOID})
    result = runner.invoke(app, ["compare", str(db), "softmax", "sigmoid"])
    expected = (
        "error: B='sigmoid': finished no task, position and width that softmax finished "
        "(allowed: softmax finished mqar / rope / d16)\n"
    )
    assert (result.exit_code, result.output) == (2, expected)
