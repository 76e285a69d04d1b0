"""``run_ray``: the same sweep on a local Ray instance and with ``run_local`` gives the same database rows.

One run of the sweep fails on purpose (a learning rate of 1e30 makes the loss nan at step 2), so failures are
compared too. Ray is optional: the Ray tests are skipped, with the reason, when it is not installed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from attnlab.errors import ConfigError
from attnlab.runner.config import RunConfig, Sweep
from attnlab.runner.execute import RunOutcome
from attnlab.runner.local import SweepSummary, run_local
from attnlab.runner.ray_backend import connect, import_ray, plan_ray_workers, run_ray
from attnlab.runner.store import Store
from attnlab.train.config import TrainConfig

REPO = Path(__file__).resolve().parents[2]
FAILING_LR = 1e30  # Adam's first steps move every weight by ~lr: the logits overflow, the loss is nan at step 2


def has_ray() -> bool:
    try:
        import ray  # noqa: F401
    except ImportError:
        return False
    return True


needs_ray = pytest.mark.skipif(not has_ray(), reason="ray is not installed (pip install 'attnlab[ray]')")


def comparable(store: Store) -> dict[str, dict[str, Any]]:
    """Each run's row without host, pid and timings: status, final metrics, curves, first error line."""
    out = {}
    for row in store.runs():
        final = {k: v for k, v in row["final"].items() if k != "train_s"}
        error = (row["error"] or "").splitlines()[:1]
        out[row["run_id"]] = {
            "status": row["status"],
            "attempts": row["attempts"],
            "final": final,
            "curves": store.curves(row["run_id"]),
            "error": error,
        }
    return out


@dataclass
class Pair:
    runs: list[RunConfig]
    on_ray: Store
    local: Store
    ray_summary: SweepSummary
    local_summary: SweepSummary
    started: list[str]
    finished: list[tuple[str, bool]]
    driver_pid: int
    interrupted: Store  # a sweep of long runs stopped by SIGINT a few seconds after its first run started
    interrupt: BaseException | None
    sigint_handler_after: object


def interrupt_soon(runs: list[RunConfig], store: Store) -> BaseException | None:
    """``run_ray`` on long runs, with SIGINT sent to this process 3 s after the first run starts (as Ctrl-C)."""
    timers: list[threading.Timer] = []

    def on_start(run: RunConfig) -> None:
        if not timers:
            timers.append(threading.Timer(3.0, os.kill, (os.getpid(), signal.SIGINT)))
            timers[0].start()

    try:
        run_ray(runs, store, workers=2, threads=1, on_start=on_start)
    except KeyboardInterrupt as err:
        return err
    finally:
        for t in timers:
            t.cancel()
    return None


@pytest.fixture(scope="module")
def pair(make_sweep: Callable[..., Sweep], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    """Three tiny runs (one failing) on a local Ray with two CPUs into one database, in-process into another."""
    ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'attnlab[ray]')")
    runs = make_sweep(lrs=[1e-3, 3e-3, FAILING_LR], seeds=[0]).runs()
    folder = tmp_path_factory.mktemp("ray")
    on_ray, local = Store(folder / "ray.sqlite"), Store(folder / "local.sqlite")
    started: list[str] = []
    finished: list[tuple[str, bool]] = []

    def on_done(run: RunConfig, outcome: RunOutcome) -> None:
        finished.append((run.run_id, outcome.ok))

    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # Ray's notice about accelerator variables
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    interrupted = Store(folder / "interrupted.sqlite")
    long_runs = make_sweep(lrs=[1e-3], seeds=[0, 1, 2], train=TrainConfig(steps=100_000, eval_every=50_000)).runs()
    try:
        ray_summary = run_ray(
            runs, on_ray, workers=2, threads=1, on_start=lambda r: started.append(r.run_id), on_done=on_done
        )
        interrupt = interrupt_soon(long_runs, interrupted)
        handler_after = signal.getsignal(signal.SIGINT)
    finally:
        ray.shutdown()
    local_summary = run_local(runs, local, workers=0, threads=1)
    yield Pair(
        runs,
        on_ray,
        local,
        ray_summary,
        local_summary,
        started,
        finished,
        os.getpid(),
        interrupted,
        interrupt,
        handler_after,
    )
    for store in (on_ray, local, interrupted):
        store.close()


@needs_ray
def test_ray_and_local_backends_write_the_same_rows(pair: Pair) -> None:
    assert comparable(pair.on_ray) == comparable(pair.local)


@needs_ray
def test_the_ray_sweep_finishes_the_good_runs_and_records_the_failing_one(pair: Pair) -> None:
    statuses = {row["lr"]: row["status"] for row in pair.on_ray.runs()}
    assert statuses == {1e-3: "done", 3e-3: "done", FAILING_LR: "failed"}


@needs_ray
def test_the_failing_run_keeps_its_error(pair: Pair) -> None:
    [row] = pair.on_ray.runs(status="failed")
    assert row["error"].startswith("FloatingPointError: training loss is nan at step 2")


@needs_ray
def test_ray_and_local_summaries_agree(pair: Pair) -> None:
    expected = SweepSummary(total=3, skipped=0, done=2, failed=1)
    assert (pair.ray_summary, pair.local_summary) == (expected, expected)


@needs_ray
def test_the_runs_were_trained_in_ray_worker_processes(pair: Pair) -> None:
    pids = {row["pid"] for row in pair.on_ray.runs()}
    assert pids and pair.driver_pid not in pids and None not in pids


@needs_ray
def test_every_run_is_started_and_reported_once(pair: Pair) -> None:
    ids = sorted(r.run_id for r in pair.runs)
    assert (sorted(pair.started), sorted(run_id for run_id, _ in pair.finished)) == (ids, ids)


@needs_ray
def test_a_finished_ray_sweep_run_again_only_retries_the_failed_run(pair: Pair) -> None:
    """Nothing is submitted for done runs; Ray is not even started when nothing is left."""
    done = [r for r in pair.runs if pair.on_ray.status(r.run_id) == "done"]
    summary = run_ray(done, pair.on_ray, workers=2, threads=1)
    assert summary == SweepSummary(total=2, skipped=2, done=0, failed=0)


@needs_ray
def test_ctrl_c_stops_a_ray_sweep_with_keyboard_interrupt(pair: Pair) -> None:
    assert isinstance(pair.interrupt, KeyboardInterrupt)


@needs_ray
def test_ctrl_c_puts_the_in_flight_ray_runs_back_in_the_queue(pair: Pair) -> None:
    """Two runs were in flight (started once, now queued); the third was never started."""
    rows = sorted((row["status"], row["attempts"]) for row in pair.interrupted.runs())
    assert rows == [("queued", 0), ("queued", 1), ("queued", 1)]


@needs_ray
def test_after_a_ray_sweep_the_sigint_handler_is_restored(pair: Pair) -> None:
    assert pair.sigint_handler_after is signal.default_int_handler


@needs_ray
def test_an_address_that_is_not_a_ray_address_is_a_config_error() -> None:
    ray = import_ray()
    with pytest.raises(ConfigError, match=r"address='http://x': not a Ray address \(allowed: .*ray://host:port"):
        connect(ray, "http://x")


def test_threads_beyond_the_largest_node_are_rejected() -> None:
    with pytest.raises(ConfigError, match=r"threads=8: more than the CPUs of the largest Ray node \(4\)"):
        plan_ray_workers(10, None, 8, cluster_cpus=16, node_cpus=4)


def test_the_default_plan_fills_the_cluster_one_thread_per_task_per_cpu() -> None:
    assert plan_ray_workers(10, None, None, cluster_cpus=16, node_cpus=4) == (10, 1)
    assert plan_ray_workers(3, 3, None, cluster_cpus=16, node_cpus=4) == (3, 4)
    assert plan_ray_workers(3, None, 2, cluster_cpus=4, node_cpus=4) == (2, 2)


def test_a_missing_ray_is_a_one_line_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # ``import ray`` now raises ImportError
    with pytest.raises(ConfigError) as err:
        import_ray()
    assert str(err.value) == ("backend='ray': Ray is not installed: pip install 'attnlab[ray]' (allowed: local)")


def test_importing_attnlab_does_not_import_ray() -> None:
    code = "import sys, attnlab.runner, attnlab.cli, attnlab.runner.ray_backend; print('ray' in sys.modules)"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "False", out.stderr


@needs_ray
@pytest.mark.parametrize(
    ("workers", "threads", "message"),
    [(0, 1, "workers=0: the Ray backend needs at least one"), (1, 0, "threads=0: must be at least 1")],
)
def test_bad_worker_counts_are_rejected_before_ray_starts(
    workers: int, threads: int, message: str, tmp_path: Path, make_sweep: Callable[..., Sweep]
) -> None:
    with Store(tmp_path / "results.sqlite") as store, pytest.raises(ConfigError, match=message):
        run_ray(make_sweep().runs(), store, workers=workers, threads=threads)
    with Store(tmp_path / "results.sqlite") as store:
        assert store.runs() == []  # nothing was even queued
