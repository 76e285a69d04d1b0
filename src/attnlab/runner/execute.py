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


def checkpoint_bytes(model: torch.nn.Module) -> bytes:
    """The model's state dict as safetensors bytes (tied weights stored once per name; no pickle involved)."""
    from safetensors.torch import save

    return save({name: t.detach().cpu().clone().contiguous() for name, t in model.state_dict().items()})


def set_threads(threads: int) -> None:
    """Use ``threads`` torch intra-op threads (at least one) in this process and its children."""
    torch.set_num_threads(max(1, threads))
    os.environ["OMP_NUM_THREADS"] = str(max(1, threads))


def execute(config_json: str) -> RunOutcome:
    """Train the run described by ``config_json``; never raises for a failing run (the error is returned).

    The run's plugins (a sweep file's own entries, installed packages) are imported first: a process-pool or Ray
    worker starts without them.
    """
    from attnlab.runner.config import run_from_json
    from attnlab.train.loop import train

    t0 = time.perf_counter()
    run_id = "?"
    where = {"host": socket.gethostname(), "pid": os.getpid()}
    try:
        cfg = run_from_json(config_json, where=f"the worker on {where['host']} (pid {where['pid']})")
        run_id = cfg.run_id
        result = train(cfg.model, cfg.task, cfg.train, cfg.seed)
        weights = checkpoint_bytes(result.model) if result.model is not None else b""
        return RunOutcome(
            run_id, True, result.final, result.curves, wall_s=time.perf_counter() - t0, checkpoint=weights, **where
        )
    except Exception as exc:  # one failing run must not stop its sweep: record the error instead
        detail = "".join(traceback.format_exception(exc))
        return RunOutcome(
            run_id, False, error=f"{type(exc).__name__}: {exc}\n{detail}", wall_s=time.perf_counter() - t0, **where
        )
