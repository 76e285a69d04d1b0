"""Run a sweep on one machine: a process pool, one run per worker, torch threads split between workers.

The parent process is the only writer of the results database. At most ``workers`` runs are in flight,
and each is marked ``running`` when it is handed to a worker, so the database always says which runs
were under way. Ctrl-C (or SIGTERM) puts those back in the queue; after a SIGKILL they are still
``running`` and the next start re-runs them. Finished runs are never repeated.

With ``gpus=N`` the pool has N workers, each pinned to one GPU (``CUDA_VISIBLE_DEVICES``, set in the worker before
torch touches CUDA): one run per GPU, and a run's ``device="cuda"`` is its worker's GPU.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass

from attnlab.errors import ConfigError
from attnlab.runner.config import RunConfig
from attnlab.runner.execute import RunOutcome, execute, set_threads
from attnlab.runner.store import Store

OnDone = Callable[[RunConfig, RunOutcome], None]


@dataclass
class SweepSummary:
    """How a sweep start went: runs asked for, already done before it, finished now, failed now."""

    total: int
    skipped: int  # already done before this start
    done: int
    failed: int


class Recorder:
    """The driver's side of a sweep, shared by every backend: mark runs started, record their outcomes.

    The driver is the only writer of the results database; workers only return ``RunOutcome``s.
    """

    def __init__(
        self,
        store: Store,
        summary: SweepSummary,
        on_start: Callable[[RunConfig], None] | None = None,
        on_done: OnDone | None = None,
    ):
        self.store, self.summary, self.on_start, self.on_done = store, summary, on_start, on_done

    def begin(self, run: RunConfig) -> bytes:
        """Mark ``run`` running (it is being handed to a worker), tell ``on_start``, and return the training state it
        continues from (``Store.resume_state``; ``b""``: from scratch), for the worker."""
        self.store.start(run.run_id)
        if self.on_start is not None:
            self.on_start(run)
        return self.store.resume_state(run)

    def record(self, run: RunConfig, outcome: RunOutcome) -> None:
        """Write a finished or failed run (curves and status in one transaction) and tell ``on_done``."""
        where = {"host": outcome.host or None, "pid": outcome.pid or None}
        if outcome.ok:
            if outcome.checkpoint:  # the weights first: a run marked done always has its checkpoint
                self.store.write_checkpoint(run.run_id, outcome.checkpoint)
            if outcome.state:  # and its training state, when it stopped before its last step
                self.store.write_state(run.run_id, outcome.state)
            for step, weights in outcome.snapshots.items():  # train.checkpoint_every: the weights through training
                self.store.write_snapshot(run.run_id, step, weights)
            self.store.finish(run.run_id, outcome.final, outcome.curves, **where)
            self.summary.done += 1
        else:
            self.store.fail(run.run_id, outcome.error, **where)
            self.summary.failed += 1
        if self.on_done is not None:
            self.on_done(run, outcome)


def pending(runs: Sequence[RunConfig], store: Store) -> tuple[list[RunConfig], SweepSummary]:
    """Enqueue ``runs`` and return the ones not yet ``done``, with a summary counting the others as skipped."""
    store.enqueue(runs)
    todo = [r for r in runs if store.status(r.run_id) != "done"]
    return todo, SweepSummary(total=len(runs), skipped=len(runs) - len(todo), done=0, failed=0)


def check_pool(workers: int | None, threads: int | None) -> None:
    """``workers`` (0: in this process) and ``threads`` per worker as a user gives them; None: chosen for them."""
    if workers is not None and workers < 0:
        raise ConfigError("workers", workers, "must not be negative", "0 (runs in this process) or more")
    if threads is not None and threads < 1:
        raise ConfigError("threads", threads, "must be at least 1", ">= 1")


def plan_workers(n_runs: int, workers: int | None, threads: int | None) -> tuple[int, int]:
    """(workers, threads per worker) from the core count: fill the cores, never oversubscribe."""
    check_pool(workers, threads)
    cores = os.cpu_count() or 1
    if workers is None:
        workers = max(1, min(n_runs, cores // (threads or 1)))
    if threads is None:
        threads = max(1, cores // max(1, workers))
    return workers, threads


def check_gpus(gpus: int, workers: int | None) -> None:
    """``gpus`` (one worker per GPU) within the GPUs present, and no other worker count alongside it."""
    import torch

    present = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if gpus < 0 or gpus > present:
        raise ConfigError("gpus", gpus, f"{present} GPU(s) present here", f"0 to {present}")
    if gpus and workers is not None and workers != gpus:
        raise ConfigError("workers", workers, f"--gpus {gpus} runs one worker per GPU", [gpus])


def pin_gpu(gpu_ids: object) -> None:
    """Take one GPU index from the pool's queue and make it this process's only CUDA device."""
    os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu_ids.get_nowait())  # type: ignore[attr-defined]


def _worker_init(threads: int, gpu_ids: object = None) -> None:
    """Pool worker set-up: its GPU (with ``gpus``), its thread count, and Ctrl-C left to the parent."""
    if gpu_ids is not None:
        pin_gpu(gpu_ids)
    set_threads(threads)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and requeues


def run_local(
    runs: Sequence[RunConfig],
    store: Store,
    workers: int | None = None,
    threads: int | None = None,
    on_start: Callable[[RunConfig], None] | None = None,
    on_done: OnDone | None = None,
    gpus: int = 0,
) -> SweepSummary:
    """Run every run of ``runs`` that is not ``done`` in ``store``. ``workers=0`` runs in this process;
    ``gpus=N``: N workers, one per GPU."""
    check_gpus(gpus, workers)
    todo, summary = pending(runs, store)
    if not todo:
        return summary
    n_workers, n_threads = plan_workers(len(todo), gpus or workers or None, threads)
    recorder = Recorder(store, summary, on_start, on_done)
    begin, record = recorder.begin, recorder.record

    if workers == 0:
        set_threads(n_threads)
        for run in todo:
            resume = begin(run)
            try:
                outcome = execute(run.canonical_json(), resume)
            except BaseException:
                store.requeue_unfinished([run.run_id])
                raise
            record(run, outcome)
        return summary

    queue = list(reversed(todo))
    in_flight: dict[Future, RunConfig] = {}
    pool = _new_pool(n_workers, n_threads, gpus)
    previous_term = signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    try:
        while queue or in_flight:
            while queue and len(in_flight) < n_workers:
                run = queue.pop()
                in_flight[pool.submit(execute, run.canonical_json(), begin(run))] = run
            finished, _ = wait(in_flight, return_when=FIRST_COMPLETED)
            for fut in finished:
                if fut not in in_flight:  # requeued when the pool broke on an earlier future of this batch
                    continue
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
                    pool = _new_pool(n_workers, n_threads, gpus)
                record(run, outcome)
    except BaseException:
        store.requeue_unfinished(r.run_id for r in in_flight.values())
        _kill(pool)
        raise
    finally:
        signal.signal(signal.SIGTERM, previous_term)
    pool.shutdown()
    return summary


def _new_pool(workers: int, threads: int, gpus: int = 0) -> ProcessPoolExecutor:
    """``workers`` spawned processes; with ``gpus``, each takes one GPU index from a queue as it starts."""
    context = mp.get_context("spawn")
    gpu_ids = None
    if gpus:  # the indices this process sees (CUDA_VISIBLE_DEVICES may already select some)
        visible = [d for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
        gpu_ids = context.Queue()
        for i in range(gpus):
            gpu_ids.put(visible[i].strip() if i < len(visible) else i)
    return ProcessPoolExecutor(
        max_workers=workers, mp_context=context, initializer=_worker_init, initargs=(threads, gpu_ids)
    )


def _kill(pool: ProcessPoolExecutor) -> None:
    processes = list(getattr(pool, "_processes", {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for p in processes:
        if p.is_alive():
            p.terminate()


def _raise_keyboard_interrupt(signum: int, frame: object) -> None:
    """SIGTERM handler: stop the sweep as Ctrl-C does (in-flight runs are requeued)."""
    raise KeyboardInterrupt(f"signal {signum}")
