"""Run a sweep on one machine: a process pool, one run per worker, torch threads split between workers.

The parent process is the only writer of the results database. At most ``workers`` runs are in flight,
and each is marked ``running`` when it is handed to a worker, so the database always says which runs
were under way. Ctrl-C (or SIGTERM) puts those back in the queue; after a SIGKILL they are still
``running`` and the next start re-runs them. Finished runs are never repeated.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass

from attnlab.runner.config import RunConfig
from attnlab.runner.execute import RunOutcome, execute, set_threads
from attnlab.runner.store import Store

OnDone = Callable[[RunConfig, RunOutcome], None]


@dataclass
class SweepSummary:
    total: int
    skipped: int  # already done before this start
    done: int
    failed: int


def plan_workers(n_runs: int, workers: int | None, threads: int | None) -> tuple[int, int]:
    """(workers, threads per worker) from the core count: fill the cores, never oversubscribe."""
    cores = os.cpu_count() or 1
    if workers is None:
        workers = max(1, min(n_runs, cores // (threads or 1)))
    if threads is None:
        threads = max(1, cores // max(1, workers))
    return workers, threads


def _worker_init(threads: int) -> None:
    set_threads(threads)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and requeues


def run_local(
    runs: Sequence[RunConfig],
    store: Store,
    workers: int | None = None,
    threads: int | None = None,
    on_start: Callable[[RunConfig], None] | None = None,
    on_done: OnDone | None = None,
) -> SweepSummary:
    """Run every run of ``runs`` that is not ``done`` in ``store``. ``workers=0`` runs in this process."""
    store.enqueue(runs)
    todo = [r for r in runs if store.status(r.run_id) != "done"]
    summary = SweepSummary(total=len(runs), skipped=len(runs) - len(todo), done=0, failed=0)
    if not todo:
        return summary
    n_workers, n_threads = plan_workers(len(todo), workers or None, threads)

    def record(run: RunConfig, outcome: RunOutcome) -> None:
        if outcome.ok:
            store.finish(run.run_id, outcome.final, outcome.curves)
            summary.done += 1
        else:
            store.fail(run.run_id, outcome.error)
            summary.failed += 1
        if on_done is not None:
            on_done(run, outcome)

    def begin(run: RunConfig) -> None:
        store.start(run.run_id)
        if on_start is not None:
            on_start(run)

    if workers == 0:
        set_threads(n_threads)
        for run in todo:
            begin(run)
            try:
                outcome = execute(run.canonical_json())
            except BaseException:
                store.requeue_unfinished([run.run_id])
                raise
            record(run, outcome)
        return summary

    queue = list(reversed(todo))
    in_flight: dict[Future, RunConfig] = {}
    pool = _new_pool(n_workers, n_threads)
    previous_term = signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    try:
        while queue or in_flight:
            while queue and len(in_flight) < n_workers:
                run = queue.pop()
                begin(run)
                in_flight[pool.submit(execute, run.canonical_json())] = run
            finished, _ = wait(in_flight, return_when=FIRST_COMPLETED)
            for fut in finished:
                run = in_flight.pop(fut)
                try:
                    outcome = fut.result()
                except BrokenProcessPool as exc:  # a worker died (out of memory, a crash): record, go on
                    outcome = RunOutcome(run.run_id, False, error=f"worker process died: {exc}")
                    pool.shutdown(wait=False, cancel_futures=True)
                    for other in in_flight.values():
                        queue.append(other)
                    store.requeue_unfinished(r.run_id for r in in_flight.values())
                    in_flight.clear()
                    pool = _new_pool(n_workers, n_threads)
                record(run, outcome)
    except BaseException:
        store.requeue_unfinished(r.run_id for r in in_flight.values())
        _kill(pool)
        raise
    finally:
        signal.signal(signal.SIGTERM, previous_term)
    pool.shutdown()
    return summary


def _new_pool(workers: int, threads: int) -> ProcessPoolExecutor:
    return ProcessPoolExecutor(
        max_workers=workers, mp_context=mp.get_context("spawn"), initializer=_worker_init, initargs=(threads,)
    )


def _kill(pool: ProcessPoolExecutor) -> None:
    processes = list(getattr(pool, "_processes", {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for p in processes:
        if p.is_alive():
            p.terminate()


def _raise_keyboard_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")
