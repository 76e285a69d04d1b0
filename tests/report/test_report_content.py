"""``write_report`` on synthetic databases: markdown and HTML, a leaderboard per task, valid plots, the width
plot only with several widths, the extrapolation plot only with ``@Nx`` metrics, loss ranking for ``lm``."""

from __future__ import annotations

import base64
import io
import math
import re
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image
from synthetic_db import FAIL_LR, synthetic_final

from attnlab.report.markdown import write_report
from attnlab.report.tables import leaderboard, ranking_metric
from attnlab.runner.config import Sweep
from attnlab.runner.store import Store

MakeDb = Callable[..., Store]


@dataclass
class Report:
    md: str
    html: str
    folder: Path
    path: Path


def report_of(store: Store, folder: Path, **kwargs: object) -> Report:
    path = write_report(store, folder, **kwargs)  # type: ignore[arg-type]
    return Report(path.read_text(), (folder / "report.html").read_text(), folder, path)


def png_is_a_plot(data: bytes) -> bool:
    """A decodable PNG of a plot's size with more than a handful of colours (not blank)."""
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        return False
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        colours = image.convert("RGB").getcolors(maxcolors=1 << 22) or []
        return image.width >= 200 and image.height >= 100 and len(colours) > 20


def linked_pngs(md: str) -> list[str]:
    return re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", md)


def embedded_pngs(html: str) -> list[bytes]:
    return [base64.b64decode(d) for d in re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)]


@pytest.fixture(scope="module")
def full(make_db: MakeDb, tmp_path_factory: pytest.TempPathFactory) -> Report:
    """Two mechanisms × two widths × three learning rates (one always failing) × two seeds; 2x and 4x metrics."""
    store = make_db(lrs=[1e-3, 3e-3, FAIL_LR], factors=(2.0, 4.0))
    return report_of(store, tmp_path_factory.mktemp("full"), title="synthetic")


@pytest.fixture(scope="module")
def plain(make_db: MakeDb, tmp_path_factory: pytest.TempPathFactory) -> Report:
    """One width, no extrapolation metrics."""
    return report_of(make_db("plain", widths=[16]), tmp_path_factory.mktemp("plain"))


def test_the_report_writes_markdown_and_html_and_returns_the_markdown(full: Report) -> None:
    assert (full.path.name, sorted(p.name for p in full.folder.glob("report.*"))) == (
        "report.md",
        ["report.html", "report.md"],
    )


def test_no_temporary_file_is_left_behind(full: Report) -> None:
    assert [p.name for p in full.folder.iterdir() if p.name.endswith(".tmp")] == []


def test_the_markdown_has_a_leaderboard_with_the_mean_over_seeds_at_the_best_lr(
    full: Report, sweep_of: Callable[..., Sweep]
) -> None:
    runs = [
        r for r in sweep_of(lrs=[3e-3]).runs() if r.model.attention.normaliser == "softmax" and r.model.d_model == 32
    ]
    mean = statistics.fmean(synthetic_final(r)["accuracy"] for r in runs)
    assert f"| mqar | softmax | rope | 32 | 0.003 | {mean:.3f} (2 failed) |" in full.md


def test_the_html_has_one_leaderboard_per_task_with_a_row_per_group(make_db: MakeDb, tmp_path: Path) -> None:
    induction = {"name": "induction", "vocab": 16, "half": 6}
    store = make_db(tasks=[{"name": "mqar", "vocab": 16, "length": 16, "num_kv_pairs": 2}, induction])
    report = report_of(store, tmp_path / "two")
    tables = re.findall(r'<table class="leaderboard">(.*?)</table>', report.html, re.S)
    assert [t.count("<tr>") for t in tables] == [1 + 4, 1 + 4]  # header + 2 mechanisms × 2 widths, per task
    headed = [bool(re.search(rf"## {task}\n\n[^\n]+\n\n\| task \|", report.md)) for task in ("induction", "mqar")]
    assert headed == [True, True]  # each task's heading, the table's caption, the table


def test_every_linked_png_is_a_valid_plot(full: Report) -> None:
    names = linked_pngs(full.md)
    assert names and all(png_is_a_plot((full.folder / n).read_bytes()) for n in names)


def test_the_html_embeds_the_same_pngs_as_data_uris(full: Report) -> None:
    embedded = embedded_pngs(full.html)
    assert embedded == [(full.folder / n).read_bytes() for n in linked_pngs(full.md)]


def test_the_html_loads_nothing_from_outside(full: Report) -> None:
    sources = re.findall(r'(?:src|href)="([^"]*)"', full.html)
    assert sources and all(s.startswith(("data:image/png;base64,", "#")) for s in sources)
    assert "<script" not in full.html and "<link" not in full.html


def test_the_width_plot_appears_with_two_widths(full: Report) -> None:
    assert "mqar_width.png" in linked_pngs(full.md)


def test_no_width_plot_with_one_width(plain: Report) -> None:
    assert "mqar_width.png" not in linked_pngs(plain.md)


def test_the_extrapolation_plot_appears_with_at_nx_metrics(full: Report) -> None:
    assert "mqar_extrapolation.png" in linked_pngs(full.md)


def test_no_extrapolation_plot_without_at_nx_metrics(plain: Report) -> None:
    assert "mqar_extrapolation.png" not in linked_pngs(plain.md) and "Length extrapolation" not in plain.md


def test_the_extrapolation_table_puts_lengths_in_its_header(full: Report) -> None:
    """Trained at length 16: the factors 1, 2, 4 are lengths 16, 32, 64."""
    header = "| mechanism | accuracy @1x (16) | accuracy @2x (32) | accuracy @4x (64) | loss @1x (16) |"
    assert header in full.md


def test_the_plain_report_still_has_curves_and_wall_time(plain: Report) -> None:
    assert {"mqar_loss.png", "mqar_accuracy.png", "mqar_wall.png"} <= set(linked_pngs(plain.md))


def test_failed_runs_show_only_the_first_line_of_their_error(full: Report) -> None:
    assert "softmax / rope: FloatingPointError: nan" in full.md and "line two" not in full.md
    assert "softmax / rope: FloatingPointError: nan" in full.html and "line two" not in full.html


def test_a_sweep_filter_leaves_other_sweeps_out(make_db: MakeDb, tmp_path: Path, sweep_of: Callable) -> None:
    store = make_db(widths=[16])
    other = sweep_of(name="other", widths=[64], mechanisms=[{"normaliser": "relu"}]).runs()
    store.enqueue(other)
    report = report_of(store, tmp_path / "filtered", sweep="synthetic")
    assert "| mqar | softmax |" in report.md and "relu" not in report.md


def test_an_lm_task_is_ranked_by_loss_with_its_perplexity(make_db: MakeDb, tmp_path: Path) -> None:
    store = make_db(widths=[16])
    store.conn.execute("UPDATE runs SET task = 'lm'")  # no lm task is registered yet: relabel the rows
    report = report_of(store, tmp_path / "lm")
    [softmax] = [e for e in leaderboard(store.runs()) if e.mechanism == "softmax"]
    ci = softmax.interval
    assert "| task | mechanism | position | width | best lr | loss | 95% CI | ppl | accuracy |" in report.md
    expected = f"| lm | softmax | rope | 16 | 0.003 ↑ | {softmax.loss:.3f} | \\[{ci.low:.3f}, {ci.high:.3f}\\] |"
    assert expected + f" {math.exp(softmax.loss):.2f} |" in report.md


def row(task: str, lr: float, final: dict[str, float]) -> dict:
    return {"task": task, "mechanism": "m", "position": "p", "width": 8, "lr": lr, "seed": 0, "status": "done"} | {
        "final": final,
        "wall_s": 1.0,
    }


def test_lm_picks_the_learning_rate_with_the_lowest_loss_not_the_best_accuracy() -> None:
    rows = [row("lm", 1e-3, {"loss": 3.0, "accuracy": 0.5}), row("lm", 3e-3, {"loss": 2.5, "accuracy": 0.4})]
    [entry] = leaderboard(rows)
    assert (entry.metric, entry.best_lr, entry.ppl) == ("loss", 3e-3, pytest.approx(math.exp(2.5)))


def test_a_task_reporting_no_accuracy_is_ranked_by_loss() -> None:
    rows = [row("x", 1e-3, {"loss": 1.0}), row("x", 3e-3, {"loss": 0.5})]
    assert (ranking_metric("x", rows), leaderboard(rows)[0].best_lr) == ("loss", 3e-3)


def test_other_tasks_are_ranked_by_accuracy() -> None:
    rows = [row("mqar", 1e-3, {"loss": 0.1, "accuracy": 0.5}), row("mqar", 3e-3, {"loss": 2.0, "accuracy": 0.9})]
    [entry] = leaderboard(rows)
    assert (entry.metric, entry.best_lr) == ("accuracy", 3e-3)


def test_the_leaderboard_lists_lm_entries_lowest_loss_first() -> None:
    rows = [row("lm", 1e-3, {"loss": 3.0}) | {"mechanism": "a"}, row("lm", 1e-3, {"loss": 2.0}) | {"mechanism": "b"}]
    assert [e.mechanism for e in leaderboard(rows)] == ["b", "a"]


def test_two_task_names_with_the_same_file_safe_form_get_separate_pngs(make_db: MakeDb, tmp_path: Path) -> None:
    store = make_db(widths=[16])
    with store.transaction() as c:
        c.execute("UPDATE runs SET task = 'x y' WHERE mechanism = 'softmax'")
        c.execute("UPDATE runs SET task = 'x-y' WHERE mechanism = 'sigmoid'")
    report = report_of(store, tmp_path / "clash")
    names = linked_pngs(report.md)
    assert len(names) == len(set(names)) == 2 * 3  # loss, accuracy and wall time for each task
