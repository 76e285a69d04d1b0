"""The results database: SQLite in WAL mode, every write one transaction.

``runs``: one row per run id (sha1 of its config) with status queued / running / done / failed, the
error text, host, timings and final metrics. ``metrics``: (run_id, step, name, value) curves. A run's
curves and its ``done`` status are written in the same transaction, so a run is either finished with
all its data or not finished at all; a restarted sweep re-runs whatever is not ``done``.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from attnlab.runner.config import RunConfig

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id      TEXT PRIMARY KEY,
    sweep       TEXT NOT NULL,
    task        TEXT NOT NULL,
    mechanism   TEXT NOT NULL,
    position    TEXT NOT NULL,
    width       INTEGER NOT NULL,
    lr          REAL NOT NULL,
    seed        INTEGER NOT NULL,
    config      TEXT NOT NULL,
    status      TEXT NOT NULL CHECK (status IN ('queued', 'running', 'done', 'failed')),
    error       TEXT,
    host        TEXT,
    pid         INTEGER,
    attempts    INTEGER NOT NULL DEFAULT 0,
    queued_at   REAL,
    started_at  REAL,
    finished_at REAL,
    wall_s      REAL,
    final       TEXT
);
CREATE TABLE IF NOT EXISTS metrics (
    run_id TEXT NOT NULL REFERENCES runs(run_id),
    step   INTEGER NOT NULL,
    name   TEXT NOT NULL,
    value  REAL NOT NULL,
    PRIMARY KEY (run_id, step, name)
);
CREATE INDEX IF NOT EXISTS runs_by_sweep ON runs(sweep, status);
"""


class Store:
    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.conn = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        self.conn.row_factory = sqlite3.Row
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self.conn.execute("PRAGMA foreign_keys=ON")
        with self.transaction() as c:
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    c.execute(statement)

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        else:
            self.conn.execute("COMMIT")

    def enqueue(self, runs: Iterable[RunConfig]) -> int:
        """Insert runs not yet known as ``queued``; known runs keep their status. Returns how many are new."""
        now = time.time()
        rows = [
            (
                r.run_id,
                r.sweep,
                r.task.name,
                r.mechanism,
                r.position,
                r.model.d_model,
                r.train.lr,
                r.seed,
                r.canonical_json(),
                now,
            )
            for r in runs
        ]
        with self.transaction() as c:
            before = c.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
            c.executemany(
                "INSERT OR IGNORE INTO runs (run_id, sweep, task, mechanism, position, width, lr, seed, config,"
                " status, queued_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'queued', ?)",
                rows,
            )
            return c.execute("SELECT COUNT(*) FROM runs").fetchone()[0] - before

    def status(self, run_id: str) -> str | None:
        row = self.conn.execute("SELECT status FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        return None if row is None else row["status"]

    def start(self, run_id: str, pid: int | None = None) -> None:
        with self.transaction() as c:
            c.execute(
                "UPDATE runs SET status='running', host=?, pid=?, started_at=?, attempts=attempts+1, error=NULL"
                " WHERE run_id=?",
                (socket.gethostname(), pid or os.getpid(), time.time(), run_id),
            )

    def finish(self, run_id: str, final: dict[str, float], curves: Iterable[tuple[int, str, float]]) -> None:
        """Record a finished run: curves and status in one transaction."""
        now = time.time()
        with self.transaction() as c:
            c.execute("DELETE FROM metrics WHERE run_id=?", (run_id,))
            c.executemany(
                "INSERT INTO metrics (run_id, step, name, value) VALUES (?, ?, ?, ?)",
                [(run_id, int(s), str(n), float(v)) for s, n, v in curves],
            )
            c.execute(
                "UPDATE runs SET status='done', finished_at=?, wall_s=? - COALESCE(started_at, ?), final=?, error=NULL"
                " WHERE run_id=?",
                (now, now, now, json.dumps(final, sort_keys=True), run_id),
            )

    def fail(self, run_id: str, error: str) -> None:
        now = time.time()
        with self.transaction() as c:
            c.execute(
                "UPDATE runs SET status='failed', finished_at=?, wall_s=? - COALESCE(started_at, ?), error=?"
                " WHERE run_id=?",
                (now, now, now, error[-4000:], run_id),
            )

    def requeue_unfinished(self, run_ids: Iterable[str]) -> None:
        """Runs that were running when their sweep died go back to the queue."""
        with self.transaction() as c:
            c.executemany(
                "UPDATE runs SET status='queued' WHERE run_id=? AND status='running'", [(r,) for r in run_ids]
            )

    def runs(self, sweep: str | None = None, status: str | None = None) -> list[dict[str, Any]]:
        query, args = "SELECT * FROM runs WHERE 1=1", []
        if sweep is not None:
            query, args = query + " AND sweep=?", [*args, sweep]
        if status is not None:
            query, args = query + " AND status=?", [*args, status]
        out = []
        for row in self.conn.execute(query + " ORDER BY queued_at, run_id", args):
            d = dict(row)
            d["final"] = json.loads(d["final"]) if d["final"] else {}
            out.append(d)
        return out

    def curves(self, run_id: str) -> list[tuple[int, str, float]]:
        rows = self.conn.execute("SELECT step, name, value FROM metrics WHERE run_id=? ORDER BY step, name", (run_id,))
        return [(r["step"], r["name"], r["value"]) for r in rows]
