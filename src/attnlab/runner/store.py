"""The results database: SQLite in WAL mode, every write one transaction.

``runs``: one row per run id (sha1 of its config) with status queued / running / done / failed, the
error text, host, timings and final metrics. ``metrics``: (run_id, step, name, value) curves. A run's
curves and its ``done`` status are written in the same transaction, so a run is either finished with
all its data or not finished at all; a restarted sweep re-runs whatever is not ``done``.

Next to the database, ``x.checkpoints/`` holds each finished run's weights (``RUN.safetensors``) and, for a run
that stopped before its last step (``train.stop_at``: an intermediate rung of the learning-rate search), its whole
training state (``RUN.state.safetensors``, ``attnlab.train.state``), from which ``resume_state`` lets a later run of
the same config continue.

``sittings``: one row per ``attnlab run`` of a sweep (host, workers, threads, start, and the time of its last
finished run or its end), so a sweep run in several sittings has a wall time in all (``Store.wall_time``); a
sitting killed outright ends at its last finished run.

``claim_results``: the measurement of a claim whose experiment is a function (``attnlab.claims``), by claim name
and version, as JSON, so ``attnlab claims run`` measures it once.

``benchmarks``: one row per benchmark run (``attnlab speed --db``) with its whole JSON result; ``speed``: its
time and peak-memory rows (case, T, mode, value, ratio to SDPA), flattened for queries and the report. A
benchmark's id is the sha1 of its JSON, so storing the same result twice is one row.

Opening a path that cannot be a results database (a folder, a file that is not SQLite, an SQLite file whose
tables lack these columns) raises ``ConfigError`` naming the path, before anything is written into it.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import closing, contextmanager
from functools import cache
from pathlib import Path
from typing import Any

from attnlab.errors import ConfigError
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
CREATE TABLE IF NOT EXISTS sittings (
    sitting_id  INTEGER PRIMARY KEY AUTOINCREMENT,
    sweep       TEXT NOT NULL,
    host        TEXT,
    workers     INTEGER,
    threads     INTEGER,
    started_at  REAL NOT NULL,
    finished_at REAL,
    ended       TEXT
);
CREATE TABLE IF NOT EXISTS claim_results (
    claim   TEXT NOT NULL,
    version TEXT NOT NULL,
    created REAL NOT NULL,
    host    TEXT,
    data    TEXT NOT NULL,
    PRIMARY KEY (claim, version)
);
CREATE TABLE IF NOT EXISTS benchmarks (
    bench_id TEXT PRIMARY KEY,
    kind     TEXT NOT NULL,
    created  REAL NOT NULL,
    host     TEXT,
    data     TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS speed (
    bench_id  TEXT NOT NULL REFERENCES benchmarks(bench_id),
    measure   TEXT NOT NULL CHECK (measure IN ('time', 'memory')),
    case_name TEXT NOT NULL,
    mechanism TEXT NOT NULL,
    backend   TEXT NOT NULL,
    t         INTEGER NOT NULL,
    mode      TEXT NOT NULL,
    value     REAL,
    ratio     REAL,
    skipped   TEXT,
    PRIMARY KEY (bench_id, measure, case_name, t, mode)
);
"""
SPEED_VALUE = {"time": "median_s", "memory": "peak_mib"}  # the measured value of each speed row, per measure
WANTED = "a results database written by attnlab, or a new file"


@cache
def schema_columns() -> dict[str, set[str]]:
    """Every table of ``SCHEMA`` and its columns, read back from an in-memory database built from it."""
    with closing(sqlite3.connect(":memory:")) as mem:
        mem.executescript(SCHEMA)
        return {table: _columns(mem, table) for table in _tables(mem)}


def _tables(conn: sqlite3.Connection) -> list[str]:
    return [name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]


def _columns(conn: sqlite3.Connection, table: str) -> set[str]:
    return {row[1] for row in conn.execute("SELECT * FROM pragma_table_info(?)", (table,))}


def connect(path: Path) -> sqlite3.Connection:
    """A WAL-mode connection to ``path``, or a ``ConfigError`` when ``path`` cannot be a results database."""
    if path.is_dir():
        raise ConfigError("db", str(path), "is a folder", WANTED)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:  # a file where one of its folders should be
        raise ConfigError("db", str(path), f"cannot make its folder: {err.strerror}", WANTED) from None
    conn = sqlite3.connect(path, timeout=60, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")  # the first read of the file: a foreign file fails here
        tables = set(_tables(conn))
    except sqlite3.DatabaseError as err:
        conn.close()
        name = err.sqlite_errorname or ""
        if name == "SQLITE_NOTADB":
            raise ConfigError("db", str(path), "is not an SQLite database", WANTED) from None
        if name.startswith("SQLITE_CANTOPEN"):
            raise ConfigError("db", str(path), f"cannot be opened: {err}", WANTED) from None
        raise
    for table, wanted in schema_columns().items():
        missing = wanted - _columns(conn, table) if table in tables else set()
        if missing:
            conn.close()
            problem = f"an SQLite database of another program: table {table} lacks {', '.join(sorted(missing))}"
            raise ConfigError("db", str(path), problem, WANTED)
    return conn


class Store:
    """The results database of one or more sweeps; open it, write through its methods, close it."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        self.conn = connect(self.path)
        self.conn.row_factory = sqlite3.Row
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self.conn.execute("PRAGMA foreign_keys=ON")
        with self.transaction() as c:
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    c.execute(statement)

    def close(self) -> None:
        """Close the connection."""
        self.conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` … ``COMMIT``, rolled back on any exception (KeyboardInterrupt included)."""
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
        """The run's status (queued / running / done / failed), or None for an unknown run id."""
        row = self.conn.execute("SELECT status FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        return None if row is None else row["status"]

    def start(self, run_id: str, pid: int | None = None) -> None:
        """Mark a run ``running`` (handed to a worker) and count the attempt."""
        with self.transaction() as c:
            c.execute(
                "UPDATE runs SET status='running', host=?, pid=?, started_at=?, attempts=attempts+1, error=NULL"
                " WHERE run_id=?",
                (socket.gethostname(), pid or os.getpid(), time.time(), run_id),
            )

    @property
    def checkpoint_dir(self) -> Path:
        """Where finished runs' weights live: ``runs/x.sqlite`` → ``runs/x.checkpoints/``."""
        return self.path.with_suffix(".checkpoints")

    def checkpoint_path(self, run_id: str) -> Path:
        """The safetensors file of a run's trained weights (it exists once the run is done)."""
        return self.checkpoint_dir / f"{run_id}.safetensors"

    def write_checkpoint(self, run_id: str, data: bytes) -> Path:
        """Write a run's weights atomically (tmp + rename), so a killed sweep never leaves half a file."""
        return _write_atomic(self.checkpoint_path(run_id), data)

    def write_snapshot(self, run_id: str, step: int, data: bytes) -> Path:
        """Write a run's weights at a step of its training (``train.checkpoint_every``) atomically."""
        return _write_atomic(self.checkpoint_dir / f"{run_id}.step{step}.safetensors", data)

    def snapshot_steps(self, run_id: str) -> dict[int, Path]:
        """The steps whose weights are kept for ``run_id`` → their files: its own, and those of the earlier stops
        of its search lineage (a continued run's early steps were trained, and kept, by the run it continued;
        the weights at a step are the same for every run of one lineage)."""
        row = self.conn.execute("SELECT config FROM runs WHERE run_id=?", (run_id,)).fetchone()
        if row is None:
            return {}
        mine = _lineage(row["config"])
        run = json.loads(row["config"])
        kin = [
            r["run_id"]
            for r in self.conn.execute("SELECT run_id, config FROM runs WHERE status='done' AND seed=?", (run["seed"],))
            if r["run_id"] == run_id or _lineage(r["config"]) == mine
        ]
        found: dict[int, Path] = {}
        for other in [run_id, *(k for k in kin if k != run_id)]:
            for path in self.checkpoint_dir.glob(f"{other}.step*.safetensors"):
                step = path.name[len(other) + len(".step") : -len(".safetensors")]
                if step.isdigit():
                    found.setdefault(int(step), path)
        return dict(sorted(found.items()))

    def state_path(self, run_id: str) -> Path:
        """The training state of a run that stopped at ``train.stop_at`` (it exists once the run is done)."""
        return self.checkpoint_dir / f"{run_id}.state.safetensors"

    def write_state(self, run_id: str, data: bytes) -> Path:
        """Write a run's training state atomically, as ``write_checkpoint`` does its weights."""
        return _write_atomic(self.state_path(run_id), data)

    def drop_state(self, run_id: str) -> None:
        """Delete a run's training state (once no run will continue from it); its weights stay."""
        self.state_path(run_id).unlink(missing_ok=True)

    def resume_state(self, run: RunConfig) -> bytes:
        """The training state ``run`` continues from: that of the finished run of the same config (all but
        ``train.stop_at``) that stopped latest before ``run``'s last step and whose state file is there; ``b""``
        when there is none (``run`` then trains from scratch, to the same result: a deleted state file costs time,
        not correctness)."""
        last = run.train.stop_at or run.train.steps
        mine = _lineage(run.canonical_json())
        rows = self.conn.execute(
            "SELECT run_id, config FROM runs WHERE status='done' AND task=? AND mechanism=? AND position=?"
            " AND width=? AND lr=? AND seed=?",
            (run.task.name, run.mechanism, run.position, run.model.d_model, run.train.lr, run.seed),
        )
        earlier = []
        for row in rows:
            config = json.loads(row["config"])
            stop = config.get("train", {}).get("stop_at")
            if stop is not None and stop < last and _lineage(row["config"]) == mine:
                earlier.append((stop, row["run_id"]))
        for _, run_id in sorted(earlier, reverse=True):
            path = self.state_path(run_id)
            if path.is_file():
                return path.read_bytes()
        return b""

    def outcomes(self, run_ids: Iterable[str]) -> dict[str, tuple[str, dict[str, float]]]:
        """run_id → (status, final metrics) for the given runs that are in the database."""
        ids = list(run_ids)
        out: dict[str, tuple[str, dict[str, float]]] = {}
        for start in range(0, len(ids), 500):  # under SQLite's limit on bound parameters
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for row in self.conn.execute(f"SELECT run_id, status, final FROM runs WHERE run_id IN ({marks})", chunk):
                out[row["run_id"]] = (row["status"], json.loads(row["final"]) if row["final"] else {})
        return out

    def finish(
        self,
        run_id: str,
        final: dict[str, float],
        curves: Iterable[tuple[int, str, float]],
        host: str | None = None,
        pid: int | None = None,
    ) -> None:
        """Record a finished run: curves and status in one transaction.

        ``host`` / ``pid``, when given, say where the run was trained (a Ray worker) and replace the
        driver's, which ``start`` wrote.
        """
        now = time.time()
        with self.transaction() as c:
            c.execute("DELETE FROM metrics WHERE run_id=?", (run_id,))
            c.executemany(
                "INSERT INTO metrics (run_id, step, name, value) VALUES (?, ?, ?, ?)",
                [(run_id, int(s), str(n), float(v)) for s, n, v in curves],
            )
            c.execute(
                "UPDATE runs SET status='done', finished_at=?, wall_s=? - COALESCE(started_at, ?), final=?, error=NULL,"
                " host=COALESCE(?, host), pid=COALESCE(?, pid) WHERE run_id=?",
                (now, now, now, json.dumps(final, sort_keys=True), host or None, pid or None, run_id),
            )

    def fail(self, run_id: str, error: str, host: str | None = None, pid: int | None = None) -> None:
        """Record a failed run with its error text (the last 4000 characters)."""
        now = time.time()
        with self.transaction() as c:
            c.execute(
                "UPDATE runs SET status='failed', finished_at=?, wall_s=? - COALESCE(started_at, ?), error=?,"
                " host=COALESCE(?, host), pid=COALESCE(?, pid) WHERE run_id=?",
                (now, now, now, error[-4000:], host or None, pid or None, run_id),
            )

    def begin_sitting(self, sweep: str, workers: int | None, threads: int | None) -> int:
        """Record that a sitting of ``sweep`` starts now; returns its id (see ``touch_sitting``). A claim's sittings
        go under ``claim:NAME`` (``attnlab.claims.run``)."""
        now = time.time()
        with self.transaction() as c:
            cur = c.execute(
                "INSERT INTO sittings (sweep, host, workers, threads, started_at, finished_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (sweep, socket.gethostname(), workers, threads, now, now),
            )
        return int(cur.lastrowid or 0)

    def touch_sitting(self, sitting_id: int, ended: str | None = None) -> None:
        """The sitting is still going now (a run finished), or it ``ended`` ("finished", "interrupted")."""
        with self.transaction() as c:
            c.execute(
                "UPDATE sittings SET finished_at = ?, ended = COALESCE(?, ended) WHERE sitting_id = ?",
                (time.time(), ended, sitting_id),
            )

    def sittings(self, sweep: str | None = None) -> list[dict[str, Any]]:
        """The sittings of ``sweep`` (or of every sweep), oldest first, each with its ``wall_s``.

        A sitting killed outright (no ``ended``) may have been killed between a run's finish and the sitting's touch:
        it ends at the later of its last touch and the last run of its sweep finished before the next sitting began.
        """
        where, args = ("WHERE sweep = ?", (sweep,)) if sweep is not None else ("", ())
        rows = [dict(r) for r in self.conn.execute(f"SELECT * FROM sittings {where} ORDER BY sitting_id", args)]
        for i, r in enumerate(rows):
            end = r["finished_at"] or r["started_at"]
            if r["ended"] is None:
                later = [n["started_at"] for n in rows[i + 1 :] if n["sweep"] == r["sweep"]]
                (last,) = self.conn.execute(
                    "SELECT MAX(finished_at) FROM runs WHERE sweep = ? AND status = 'done' AND finished_at >= ?"
                    " AND finished_at < ?",
                    (r["sweep"], r["started_at"], later[0] if later else float("inf")),
                ).fetchone()
                end = max(end, last or end)
            r["wall_s"] = end - r["started_at"]
        return rows

    def wall_time(self, sweep: str) -> float:
        """The wall time of every sitting of ``sweep``, in seconds."""
        return sum(s["wall_s"] for s in self.sittings(sweep))

    def put_claim_result(self, claim: str, version: str, data: dict[str, Any]) -> None:
        """Keep a claim's measurement (replacing one of the same name and version)."""
        with self.transaction() as c:
            c.execute(
                "INSERT OR REPLACE INTO claim_results (claim, version, created, host, data) VALUES (?, ?, ?, ?, ?)",
                (claim, version, time.time(), socket.gethostname(), json.dumps(data)),
            )

    def claim_result(self, claim: str, version: str) -> dict[str, Any] | None:
        """The kept measurement of ``claim`` at ``version``, or None."""
        row = self.conn.execute(
            "SELECT data FROM claim_results WHERE claim = ? AND version = ?", (claim, version)
        ).fetchone()
        return json.loads(row["data"]) if row else None

    def requeue_unfinished(self, run_ids: Iterable[str]) -> None:
        """Runs that were running when their sweep died go back to the queue."""
        with self.transaction() as c:
            c.executemany(
                "UPDATE runs SET status='queued' WHERE run_id=? AND status='running'", [(r,) for r in run_ids]
            )

    def runs(
        self, sweep: str | None = None, status: str | None = None, run_ids: Iterable[str] | None = None
    ) -> list[dict[str, Any]]:
        """Every run row (optionally of one sweep / status / set of ids) as a dict; ``final`` is decoded from JSON.
        Tasks and variants are labelled over the rows returned (``label_tasks``, ``label_variants``)."""
        query, args = "SELECT * FROM runs WHERE 1=1", []
        if sweep is not None:
            query, args = query + " AND sweep=?", [*args, sweep]
        if status is not None:
            query, args = query + " AND status=?", [*args, status]
        wanted = None if run_ids is None else set(run_ids)
        out = []
        for row in self.conn.execute(query + " ORDER BY queued_at, run_id", args):
            if wanted is not None and row["run_id"] not in wanted:
                continue
            d = dict(row)
            d["final"] = json.loads(d["final"]) if d["final"] else {}
            out.append(d)
        return label_variants(label_tasks(out))

    def sweeps(self) -> list[str]:
        """The names of the sweeps that have runs here, sorted."""
        return [row[0] for row in self.conn.execute("SELECT DISTINCT sweep FROM runs ORDER BY sweep")]

    def curves(self, run_id: str) -> list[tuple[int, str, float]]:
        """One run's curves: (step, name, value), ordered by step then name."""
        rows = self.conn.execute("SELECT step, name, value FROM metrics WHERE run_id=? ORDER BY step, name", (run_id,))
        return [(r["step"], r["name"], r["value"]) for r in rows]

    def metrics(self, sweep: str | None = None) -> list[tuple[str, int, str, float]]:
        """Every curve point (run_id, step, name, value) of every run (of one sweep), in one query."""
        query = "SELECT m.run_id, m.step, m.name, m.value FROM metrics m JOIN runs r ON r.run_id = m.run_id"
        args: list[Any] = []
        if sweep is not None:
            query, args = query + " WHERE r.sweep = ?", [sweep]
        rows = self.conn.execute(query + " ORDER BY r.queued_at, m.run_id, m.step, m.name", args)
        return [(r[0], r[1], r[2], r[3]) for r in rows]

    def add_speed(self, data: dict[str, Any]) -> str:
        """Store one speed benchmark result (``attnlab.speed``'s ``speed.json``); returns its id. One transaction."""
        text = json.dumps(data, sort_keys=True)
        bench_id = hashlib.sha1(text.encode()).hexdigest()[:16]
        rows = [
            (
                bench_id,
                measure,
                r["case"],
                r["mechanism"],
                r["backend"],
                int(r["T"]),
                r["mode"],
                r.get(key),
                r.get("ratio_vs_sdpa"),
                r.get("skipped"),
            )
            for measure, key in SPEED_VALUE.items()
            for r in data.get("timing" if measure == "time" else "memory", [])
        ]
        with self.transaction() as c:
            c.execute(
                "INSERT OR IGNORE INTO benchmarks (bench_id, kind, created, host, data) VALUES (?, 'speed', ?, ?, ?)",
                (bench_id, time.time(), socket.gethostname(), text),
            )
            c.executemany("INSERT OR IGNORE INTO speed VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
        return bench_id

    def speed_benchmarks(self) -> list[dict[str, Any]]:
        """Every stored speed benchmark, newest first: bench_id, created, host and the decoded ``data``."""
        rows = self.conn.execute("SELECT * FROM benchmarks WHERE kind='speed' ORDER BY created DESC, bench_id")
        return [{**dict(r), "data": json.loads(r["data"])} for r in rows]

    def speed_rows(self, bench_id: str) -> list[dict[str, Any]]:
        """One benchmark's rows in ``attnlab.speed``'s row format, plus ``measure`` (time / memory) and ``value``."""
        rows = self.conn.execute("SELECT * FROM speed WHERE bench_id=? ORDER BY measure, rowid", (bench_id,)).fetchall()
        return [
            {
                "measure": r["measure"],
                "case": r["case_name"],
                "mechanism": r["mechanism"],
                "backend": r["backend"],
                "T": r["t"],
                "mode": r["mode"],
                "value": r["value"],
                SPEED_VALUE[r["measure"]]: r["value"],
                "ratio_vs_sdpa": r["ratio"],
                "skipped": r["skipped"],
            }
            for r in rows
        ]


def _write_atomic(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file and a rename: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_bytes(data)
    tmp.replace(path)
    return path


def _lineage(config_json: str) -> dict[str, Any]:
    """A run's stored config without what a run and its continuations may differ in: ``train.stop_at``, and the
    sweep and plugins (not part of a run's identity)."""
    config = json.loads(config_json)
    config.pop("sweep", None)
    config.pop("plugins", None)
    config["train"] = {k: v for k, v in config.get("train", {}).items() if k != "stop_at"}
    return config


def label_tasks(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Tell apart runs of one task with different settings: ``task`` becomes ``mqar[length=128 num_kv_pairs=8]``.

    Only the fields that differ between the task configs of the same name in ``rows`` are named, so a
    database with one MQAR setting keeps the plain name. ``task_name`` keeps the registered name.
    """
    configs: dict[str, dict[str, dict[str, Any]]] = {}
    for row in rows:
        row["task_name"] = row["task"]
        task = json.loads(row["config"]).get("task", {}) if row.get("config") else {}
        configs.setdefault(row["task"], {})[json.dumps(task, sort_keys=True)] = task
    labels: dict[tuple[str, str], str] = {}
    for name, variants in configs.items():
        if len(variants) < 2:
            continue
        keys = sorted({k for t in variants.values() for k in t})
        differ = [k for k in keys if len({json.dumps(t.get(k), sort_keys=True) for t in variants.values()}) > 1]
        for key, task in variants.items():
            labels[(name, key)] = f"{name}[{' '.join(f'{k}={task.get(k)}' for k in differ)}]"
    for row in rows:
        if labels:
            task = json.loads(row["config"]).get("task", {}) if row.get("config") else {}
            row["task"] = labels.get((row["task"], json.dumps(task, sort_keys=True)), row["task"])
    return rows


# What a leaderboard row already names, or may differ in between a group's runs: the axes (task, mechanism,
# position, width), the learning rate and seed it chooses and averages over, a search's stop, where code lives.
_GROUPED = {"sweep", "plugins", "seed", "task", "model.attention", "model.d_model", "train.lr", "train.stop_at"}


def _flat(config: dict[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if name in _GROUPED:
            continue
        if isinstance(value, dict):
            out |= _flat(value, name + ".")
        else:
            out[name] = json.dumps(value, sort_keys=True)
    return out


def label_variants(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Tell apart runs of one (task, mechanism, position, width) that differ in anything else (a z-loss, the step
    budget, the depth: two sweeps in one database): ``mechanism`` becomes ``softmax[train.z_loss=0.0001]``, naming
    the fields that differ, so a leaderboard never averages two configurations as if they were seeds of one.
    A database where each group has one configuration keeps the plain names."""
    groups: dict[tuple, dict[str, dict[str, str]]] = {}
    flat: list[dict[str, str] | None] = []
    for row in rows:
        fields = _flat(json.loads(row["config"])) if row.get("config") else None
        flat.append(fields)
        if fields is not None:
            key = (row["task"], row["mechanism"], row["position"], row["width"])
            groups.setdefault(key, {})[json.dumps(fields, sort_keys=True)] = fields
    for row, fields in zip(rows, flat, strict=True):
        variants = groups.get((row["task"], row["mechanism"], row["position"], row["width"]), {})
        if fields is None or len(variants) < 2:
            continue
        names = sorted({k for v in variants.values() for k in v})
        differ = [k for k in names if len({v.get(k) for v in variants.values()}) > 1]
        parts = [f"{k}={json.loads(fields[k]) if k in fields else 'default'}" for k in differ]
        row["mechanism"] = f"{row['mechanism']}[{' '.join(parts)}]"
    return rows
