"""Export a results database to CSV (stdlib ``csv``) or Parquet (``pyarrow``, the optional extra ``export``).

Runs table (the default): one row per run — run_id, sweep, task, mechanism, position, width, lr, seed, status,
wall_s, error (its first line) — and one column per final metric (the union over the exported runs, sorted;
empty / null where a run lacks it). Curves table (``curves=True``): the long metrics table, one row per
(run, step, metric) with the run's axes. The format follows the suffix: ``.csv`` or ``.parquet``.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Any

from attnlab.errors import ConfigError
from attnlab.report.plots import temporary_beside, write_atomic
from attnlab.runner.store import Store

RUN_COLUMNS = ("run_id", "sweep", "task", "mechanism", "position", "width", "lr", "seed", "status", "wall_s", "error")
CURVE_COLUMNS = ("run_id", "sweep", "task", "mechanism", "position", "width", "lr", "seed", "step", "name", "value")
FORMATS = (".csv", ".parquet")
INTEGER = {"width", "seed", "step"}
FLOAT = {"lr", "wall_s", "value"}


def _first_line(text: str | None) -> str:
    return text.splitlines()[0] if text else ""


def run_table(store: Store, sweep: str | None = None) -> tuple[list[str], list[dict[str, Any]]]:
    """(columns, rows) of the runs table; a final metric named like a fixed column is called ``final.<name>``."""
    runs = store.runs(sweep=sweep)
    metrics = sorted({name for r in runs for name in r["final"]})
    column = {m: (f"final.{m}" if m in RUN_COLUMNS else m) for m in metrics}
    rows = []
    for r in runs:
        row: dict[str, Any] = {c: r[c] for c in RUN_COLUMNS if c != "error"}
        row["error"] = _first_line(r["error"])
        row.update({column[m]: r["final"].get(m) for m in metrics})
        rows.append(row)
    return [*RUN_COLUMNS, *column.values()], rows


def curve_table(store: Store, sweep: str | None = None) -> tuple[list[str], list[dict[str, Any]]]:
    """(columns, rows) of the long metrics table: every curve point with its run's axes."""
    runs = {r["run_id"]: r for r in store.runs(sweep=sweep)}
    rows = []
    for run_id, step, name, value in store.metrics(sweep=sweep):
        r = runs[run_id]
        rows.append({**{c: r[c] for c in CURVE_COLUMNS[:8]}, "step": step, "name": name, "value": value})
    return list(CURVE_COLUMNS), rows


def export(store: Store, path: str | os.PathLike[str], sweep: str | None = None, curves: bool = False) -> int:
    """Write the runs table (or, with ``curves``, the long metrics table) to ``path``; returns the rows written.

    ``.csv`` is written with the stdlib ``csv`` module (floats as ``repr``, so they read back exactly; a missing
    value is an empty cell); ``.parquet`` needs ``pyarrow`` (``pip install 'attnlab[export]'``). The file is
    written to a temporary name and renamed.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise ConfigError("path", str(path), "unknown export format", FORMATS)
    if path.is_dir():
        raise ConfigError("path", str(path), "is a folder", "a .csv or .parquet file")
    if suffix == ".parquet":
        pyarrow = _import_pyarrow()  # before any work: a missing extra is reported at once
    columns, rows = curve_table(store, sweep) if curves else run_table(store, sweep)
    if suffix == ".csv":
        buffer = io.StringIO(newline="")
        writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: ("" if v is None else v) for k, v in row.items()} for row in rows)
        write_atomic(path, buffer.getvalue().encode())
    else:
        _write_parquet(pyarrow, path, columns, rows)
    return len(rows)


def _import_pyarrow() -> Any:
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError:
        raise ConfigError(
            "path", ".parquet", "Parquet export needs pyarrow: pip install 'attnlab[export]'", ["a .csv file"]
        ) from None
    return pyarrow


def _write_parquet(pa: Any, path: Path, columns: list[str], rows: list[dict[str, Any]]) -> None:
    """Typed columns: integers for width / seed / step, floats for lr / wall time / metrics, strings otherwise."""
    arrays = {}
    for c in columns:
        values = [row.get(c) for row in rows]
        if c in INTEGER:
            kind = pa.int64()
        elif c in FLOAT or c not in RUN_COLUMNS + CURVE_COLUMNS:  # every final metric is a float
            kind = pa.float64()
        else:
            kind = pa.string()
        arrays[c] = pa.array(values, type=kind)
    table = pa.table(arrays)
    tmp = temporary_beside(path)
    try:
        pa.parquet.write_table(table, str(tmp))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
