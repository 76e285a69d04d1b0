"""Run a sweep on Ray: a local Ray instance, or a cluster (``address="auto"`` / ``"ray://host:port"``).

The semantics are ``run_local``'s. The driver (this process) is the only writer of the results database;
each Ray task trains one run with ``execute(config_json)`` and returns its ``RunOutcome``. A run is marked
``running`` when its task is submitted, at most ``workers`` tasks are in flight (``ray.wait``), a failed run is
recorded and the sweep goes on, a run whose Ray worker or node died is re-run by Ray on the nodes left (up to
``SYSTEM_RETRIES`` times, then recorded as failed), and Ctrl-C / SIGTERM cancel the in-flight tasks and put their
runs back in the queue. Each task asks Ray for ``num_cpus=threads`` and sets that many torch
threads, so Ray never packs more threads onto a node than it has CPUs.

Ray is an optional extra (``pip install 'attnlab[ray]'``): importing attnlab never imports it. Ray is kept
off the network: no dashboard, no usage statistics (``RAY_USAGE_STATS_ENABLED=0``). The workers' own output
is not forwarded to the driver (``log_to_driver=False``, so the progress display stays readable); a run's
error comes back in its outcome, and Ray's logs are under ``/tmp/ray/session_latest/logs``.

On a cluster, every node must have attnlab (the same version) and its dependencies installed: tasks refer
to ``attnlab.runner.ray_backend`` by name. A run's plugins (``RunConfig.plugins``: a sweep file's path, an installed
plugin's module) must be importable on every node too; a worker that cannot import one fails the run with one line
saying which entry, from where, and how to fix it (docs/cluster.md).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import threading
import traceback
import warnings
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

from attnlab.errors import ConfigError
from attnlab.runner.config import RunConfig
from attnlab.runner.execute import RunOutcome, execute, set_threads
from attnlab.runner.local import OnDone, Recorder, SweepSummary, pending
from attnlab.runner.store import Store

ADDRESSES = ("None (start a local Ray)", "auto", "ray://host:port", "host:port")
POLL_S = 1.0  # ray.wait timeout: how often the driver looks for a stop signal that Ray swallowed
# Ray re-runs a task whose worker process or node died (never one that returned: a failing run is an outcome, not an
# exception) this many times, so the runs of a node lost mid-sweep are trained on the others.
SYSTEM_RETRIES = 3
_ADDRESS = re.compile(r"^(auto|ray://[^\s/:]+:\d+|[^\s/:]+:\d+)$")


def import_ray() -> ModuleType:
    """Import Ray with its usage statistics off; a missing Ray is a one-line ConfigError, not a traceback."""
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"  # never report usage to the network
    try:
        import ray
    except ImportError:
        raise ConfigError("backend", "ray", "Ray is not installed: pip install 'attnlab[ray]'", ["local"]) from None
    return ray


def plan_ray_workers(
    n_runs: int, workers: int | None, threads: int | None, cluster_cpus: int, node_cpus: int
) -> tuple[int, int]:
    """(tasks in flight, threads per task) for a Ray cluster: fill its CPUs, never ask a node for more than it has.

    ``cluster_cpus`` is the CPU count of the whole cluster, ``node_cpus`` that of its largest node (a task's
    ``num_cpus`` must fit on one node, or Ray would wait for it forever).
    """
    if workers is not None and workers < 1:
        raise ConfigError("workers", workers, "the Ray backend needs at least one worker")
    if threads is not None and threads < 1:
        raise ConfigError("threads", threads, "must be at least 1")
    if threads is not None and threads > node_cpus:
        raise ConfigError("threads", threads, f"more than the CPUs of the largest Ray node ({node_cpus})")
    if workers is None:
        workers = max(1, min(n_runs, cluster_cpus // (threads or 1)))
    if threads is None:
        threads = max(1, min(node_cpus, cluster_cpus // workers))
    return workers, threads


def execute_in_worker(config_json: str, threads: int, resume: bytes = b"") -> RunOutcome:
    """The body of a Ray task: ``threads`` torch threads, then ``execute`` (which never raises for a failing run),
    continuing from the training state ``resume`` when the driver sent one."""
    set_threads(threads)
    return execute(config_json, resume)


def connect(ray: ModuleType, address: str | None) -> bool:
    """Start a local Ray (``address=None``) or connect to a cluster; True when this call started Ray.

    An already initialised Ray (the caller's ``ray.init``) is used as it is.
    """
    if address is not None and not _ADDRESS.match(address):
        raise ConfigError("address", address, "not a Ray address", ADDRESSES)
    if ray.is_initialized():
        return False
    quiet = {"log_to_driver": False, "logging_level": logging.WARNING}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # Ray's notice about accelerator variables
        if address is None:
            # "local": a new Ray on this machine even when RAY_ADDRESS points elsewhere
            ray.init(address="local", num_cpus=os.cpu_count() or 1, include_dashboard=False, **quiet)
        else:
            try:
                ray.init(address=address, **quiet)
            except Exception as exc:  # ConnectionError, a timeout, a version mismatch: say so in one line
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                raise ConfigError("address", address, f"cannot connect to Ray: {first}", ADDRESSES) from None
    return True


def cluster_cpus(ray: ModuleType) -> tuple[int, int]:
    """(CPUs of the whole cluster, CPUs of its largest alive node)."""
    total = int(ray.cluster_resources().get("CPU", 0))
    try:
        per_node = [int(n["Resources"].get("CPU", 0)) for n in ray.nodes() if n.get("Alive", True)]
    except Exception:  # some connection modes do not list nodes: assume one node
        per_node = []
    largest = max(per_node, default=total)
    if total < 1 or largest < 1:
        raise ConfigError("address", "ray", "the Ray cluster has no CPUs")
    return total, largest


def run_ray(
    runs: Sequence[RunConfig],
    store: Store,
    address: str | None = None,
    workers: int | None = None,
    threads: int | None = None,
    on_start: Callable[[RunConfig], None] | None = None,
    on_done: OnDone | None = None,
    gpus: float = 0,
) -> SweepSummary:
    """Run every run of ``runs`` that is not ``done`` in ``store`` as Ray tasks; the semantics of ``run_local``.

    ``gpus``: the GPUs each run asks Ray for (``num_gpus``; Ray sets the task's ``CUDA_VISIBLE_DEVICES``).

    ``address``: None starts a local Ray with every CPU of this machine (shut down again at the end);
    ``"auto"``, ``"host:port"`` or ``"ray://host:port"`` connect to a running cluster. If Ray is already
    initialised in this process, that instance is used and left running.
    """
    if gpus < 0:
        raise ConfigError("gpus", gpus, "must not be negative", "0 or more GPUs per run")
    ray = import_ray()
    plan_ray_workers(1, workers, threads, cluster_cpus=threads or 1, node_cpus=threads or 1)  # bad values: fail now
    todo, summary = pending(runs, store)
    if not todo:
        return summary
    recorder = Recorder(store, summary, on_start, on_done)
    in_flight: dict[Any, RunConfig] = {}
    stop = _StopSignal()
    started = False
    try:
        started = connect(ray, address)
        stop.install()  # after ray.init, which installs a SIGTERM handler of its own
        total, largest = cluster_cpus(ray)
        cluster_gpus = ray.cluster_resources().get("GPU", 0)
        if gpus > cluster_gpus:  # Ray would wait forever for them
            raise ConfigError("gpus", gpus, f"the Ray cluster has {cluster_gpus:g} GPU(s)", f"0 to {cluster_gpus:g}")
        n_workers, n_threads = plan_ray_workers(len(todo), workers, threads, total, largest)
        task = ray.remote(num_cpus=n_threads, num_gpus=gpus, max_retries=SYSTEM_RETRIES)(execute_in_worker)
        queue = list(reversed(todo))
        while queue or in_flight:
            while queue and len(in_flight) < n_workers:
                run = queue.pop()
                in_flight[task.remote(run.canonical_json(), n_threads, recorder.begin(run))] = run
            finished, _ = ray.wait(list(in_flight), num_returns=1, timeout=POLL_S)
            stop.check()
            for ref in finished:
                run = in_flight.pop(ref)
                recorder.record(run, _outcome(ray, ref, run))
    except BaseException:
        store.requeue_unfinished(r.run_id for r in in_flight.values())
        for ref in in_flight:
            with contextlib.suppress(Exception):  # already finished or its worker is gone: nothing to stop
                ray.cancel(ref, force=True)
        raise
    finally:
        stop.restore()
        if started:
            ray.shutdown()
    return summary


class _StopSignal:
    """SIGINT / SIGTERM → KeyboardInterrupt, remembered: Ray's own code can swallow the exception when the signal
    lands inside it, so the sweep loop also checks the flag after every ``ray.wait``."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.previous: dict[int, Any] = {}

    def __call__(self, signum: int, frame: object) -> None:
        self.signum = signum
        raise KeyboardInterrupt(f"signal {signum}")

    def install(self) -> None:
        """Handle SIGINT and SIGTERM (only possible in the main thread; elsewhere nothing changes)."""
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGINT, signal.SIGTERM):
            self.previous[sig] = signal.getsignal(sig)
            signal.signal(sig, self)

    def check(self) -> None:
        """Raise KeyboardInterrupt if a stop signal arrived and its exception was lost."""
        if self.signum is not None:
            raise KeyboardInterrupt(f"signal {self.signum}")

    def restore(self) -> None:
        """Put the previous handlers back."""
        for sig, handler in self.previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        self.previous.clear()


def _outcome(ray: ModuleType, ref: Any, run: RunConfig) -> RunOutcome:
    """The task's outcome; a task that Ray could not finish (its worker crashed) becomes a failed outcome."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayError as exc:
        detail = "".join(traceback.format_exception(exc))
        first = (str(exc).strip().splitlines() or [""])[0]
        return RunOutcome(run.run_id, False, error=f"Ray task failed: {type(exc).__name__}: {first}\n{detail}")
