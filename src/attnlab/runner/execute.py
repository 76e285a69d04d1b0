"""Execute one run from its config JSON: the function every backend (in-process, pool, Ray) calls."""

from __future__ import annotations

import os
import socket
import time
import traceback
from dataclasses import dataclass, field

import torch


@dataclass
class RunOutcome:
    """What a worker hands back to the sweep's driver, the only writer of the results database."""

    run_id: str
    ok: bool
    final: dict[str, float] = field(default_factory=dict)
    curves: list[tuple[int, str, float]] = field(default_factory=list)
    error: str = ""
    wall_s: float = 0.0
    host: str = ""  # where the run was trained (a Ray worker may be on another machine); "" if unknown
    pid: int = 0
    checkpoint: bytes = b""  # the trained weights as safetensors bytes (the driver writes the file)
    state: bytes = b""  # a run with train.stop_at: its whole training state, to continue from (attnlab.train.state)
    resumed_from: int = 0  # the step of the state it continued from; 0: trained from scratch


def checkpoint_bytes(model: torch.nn.Module) -> bytes:
    """The model's state dict as safetensors bytes (tied weights stored once per name; no pickle involved)."""
    from safetensors.torch import save

    return save({name: t.detach().cpu().clone().contiguous() for name, t in model.state_dict().items()})


def set_threads(threads: int) -> None:
    """Use ``threads`` torch intra-op threads (at least one) in this process and its children."""
    torch.set_num_threads(max(1, threads))
    os.environ["OMP_NUM_THREADS"] = str(max(1, threads))


def execute(config_json: str, resume: bytes = b"") -> RunOutcome:
    """Train the run described by ``config_json``; never raises for a failing run (the error is returned).

    The run's plugins (a sweep file's own entries, installed packages) are imported first: a process-pool or Ray
    worker starts without them. ``resume``: the training state of an earlier stop of the same run (the driver reads
    it from the results database's folder and sends it along, so a Ray worker on another node needs no shared
    disk); the run trains on from it, with the results it would have had from scratch. A state this version cannot
    read is ignored: the run trains from scratch, to the same result.
    """
    from attnlab.runner.config import run_from_json
    from attnlab.train.loop import train
    from attnlab.train.state import StateMismatch, from_bytes, to_bytes

    t0 = time.perf_counter()
    run_id = "?"
    where = {"host": socket.gethostname(), "pid": os.getpid()}
    try:
        cfg = run_from_json(config_json, where=f"the worker on {where['host']} (pid {where['pid']})")
        run_id = cfg.run_id
        try:
            state = from_bytes(resume) if resume else None
        except StateMismatch:
            state = None
        continued = {"resume": state} if state is not None else {}  # from scratch: the call it always was
        result = train(cfg.model, cfg.task, cfg.train, cfg.seed, **continued)
        return RunOutcome(
            run_id,
            True,
            result.final,
            result.curves,
            wall_s=time.perf_counter() - t0,
            checkpoint=checkpoint_bytes(result.model) if result.model is not None else b"",
            state=to_bytes(result.state) if result.state is not None else b"",
            resumed_from=state.step if state is not None else 0,
            **where,
        )
    except Exception as exc:  # one failing run must not stop its sweep: record the error instead
        detail = "".join(traceback.format_exception(exc))
        return RunOutcome(
            run_id, False, error=f"{type(exc).__name__}: {exc}\n{detail}", wall_s=time.perf_counter() - t0, **where
        )
