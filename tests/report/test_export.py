"""``export``: CSV (stdlib csv) and Parquet (pyarrow) round-trips of the runs table and the long curves table."""

from __future__ import annotations

import csv
import math
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from synthetic_db import FAIL_LR

from attnlab.errors import ConfigError
from attnlab.report.export import RUN_COLUMNS, export
from attnlab.runner.store import Store


@pytest.fixture(scope="module")
def store(make_db: Callable[..., Store]) -> Store:
    """Done runs with 2x metrics, and failed runs (which have no final metrics)."""
    return make_db(lrs=[1e-3, FAIL_LR], widths=[16], factors=(2.0,))


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_the_csv_has_one_row_per_run_with_the_same_run_ids(store: Store, tmp_path: Path) -> None:
    n = export(store, tmp_path / "runs.csv")
    rows = read_csv(tmp_path / "runs.csv")
    assert (n, [r["run_id"] for r in rows]) == (len(store.runs()), [r["run_id"] for r in store.runs()])


def test_the_csv_has_the_axes_then_one_column_per_final_metric(store: Store, tmp_path: Path) -> None:
    export(store, tmp_path / "runs.csv")
    with open(tmp_path / "runs.csv", newline="") as f:
        header = next(csv.reader(f))
    metrics = sorted({m for r in store.runs() for m in r["final"]})
    assert header == [*RUN_COLUMNS, *metrics] and "accuracy@2x" in metrics


def test_csv_metric_values_read_back_exactly(store: Store, tmp_path: Path) -> None:
    export(store, tmp_path / "runs.csv")
    read = {r["run_id"]: r for r in read_csv(tmp_path / "runs.csv")}
    for run in store.runs(status="done"):
        assert {m: float(read[run["run_id"]][m]) for m in run["final"]} == run["final"]


def test_csv_axes_and_status_read_back(store: Store, tmp_path: Path) -> None:
    export(store, tmp_path / "runs.csv")
    read = {r["run_id"]: r for r in read_csv(tmp_path / "runs.csv")}
    expected = {r["run_id"]: (r["mechanism"], int(r["width"]), r["lr"], r["seed"], r["status"]) for r in store.runs()}
    got = {k: (r["mechanism"], int(r["width"]), float(r["lr"]), int(r["seed"]), r["status"]) for k, r in read.items()}
    assert got == expected


def test_failed_runs_have_empty_metric_cells_and_their_first_error_line(store: Store, tmp_path: Path) -> None:
    export(store, tmp_path / "runs.csv")
    failed = [r for r in read_csv(tmp_path / "runs.csv") if r["status"] == "failed"]
    assert failed and all(r["accuracy"] == "" and r["error"] == "FloatingPointError: nan" for r in failed)


def test_the_curves_csv_has_every_curve_point(store: Store, tmp_path: Path) -> None:
    n = export(store, tmp_path / "curves.csv", curves=True)
    read = [(r["run_id"], int(r["step"]), r["name"], float(r["value"])) for r in read_csv(tmp_path / "curves.csv")]
    expected = [(r["run_id"], *point) for r in store.runs() for point in store.curves(r["run_id"])]
    assert (n, sorted(read)) == (len(expected), sorted(expected))


def test_a_sweep_filter_exports_only_that_sweep(store: Store, tmp_path: Path) -> None:
    assert export(store, tmp_path / "none.csv", sweep="no such sweep") == 0
    assert read_csv(tmp_path / "none.csv") == []


def test_an_unknown_suffix_is_a_config_error(store: Store, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"path='.*runs\.xlsx': unknown export format \(allowed: \.csv, \.parquet\)"):
        export(store, tmp_path / "runs.xlsx")


def test_parquet_without_pyarrow_is_a_one_line_config_error(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    with pytest.raises(ConfigError, match=r"pip install 'attnlab\[export\]'") as err:
        export(store, tmp_path / "runs.parquet")
    assert "\n" not in str(err.value) and not (tmp_path / "runs.parquet").exists()


def test_the_parquet_file_reads_back_the_same_runs_and_metrics(store: Store, tmp_path: Path) -> None:
    pq = pytest.importorskip("pyarrow.parquet", reason="pyarrow is not installed (pip install 'attnlab[export]')")
    export(store, tmp_path / "runs.parquet")
    table = pq.read_table(tmp_path / "runs.parquet").to_pylist()
    assert [r["run_id"] for r in table] == [r["run_id"] for r in store.runs()]
    for got, run in zip(table, store.runs(), strict=True):
        assert (got["width"], got["lr"], got["seed"], got["status"]) == (
            run["width"],
            run["lr"],
            run["seed"],
            run["status"],
        )
        metrics = {m: got[m] for m in run["final"]}
        assert metrics == run["final"]
        assert run["final"] or got["accuracy"] is None  # a failed run has nulls, not zeros


def test_the_parquet_curves_read_back(store: Store, tmp_path: Path) -> None:
    pq = pytest.importorskip("pyarrow.parquet", reason="pyarrow is not installed (pip install 'attnlab[export]')")
    export(store, tmp_path / "curves.parquet", curves=True)
    rows = pq.read_table(tmp_path / "curves.parquet").to_pylist()
    expected = [(r["run_id"], *point) for r in store.runs() for point in store.curves(r["run_id"])]
    got = [(r["run_id"], r["step"], r["name"], r["value"]) for r in rows]
    assert sorted(got) == sorted(expected) and not any(math.isnan(v) for *_, v in got)
