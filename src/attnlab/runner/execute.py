"""Execute one run from its config JSON: the function every backend (in-process, pool, Ray) calls."""

from __future__ import annotations

import os
import socket
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from attnlab.runner.config import RunConfig


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
    snapshots: dict[int, bytes] = field(default_factory=dict)  # train.checkpoint_every: step → weights (safetensors)


def checkpoint_bytes(model: torch.nn.Module | dict[str, torch.Tensor]) -> bytes:
    """A model's state dict (or a state dict) as safetensors bytes (tied weights stored once per name; no pickle)."""
    from safetensors.torch import save

    weights = model.state_dict() if isinstance(model, torch.nn.Module) else model
    return save({name: t.detach().cpu().clone().contiguous() for name, t in weights.items()})


PROBE_EXAMPLES = 16  # evaluation examples the training probes read at each evaluation


def training_probe(cfg: RunConfig) -> Callable[[torch.nn.Module], dict[str, float]]:
    """``train.probes``: the lens's training probes (``attnlab.lens.probes``) on the first ``PROBE_EXAMPLES`` of the
    run's evaluation set and a copying batch drawn from its seed; the same run probes the same tokens."""
    from attnlab.lens.probes import ProbeInputs, training_probes

    batch = cfg.task.build(cfg.seed).eval_batch(PROBE_EXAMPLES)
    inputs = ProbeInputs.build(
        batch.inputs,
        cfg.task.vocab_size,
        cfg.model.max_seq_len,
        seed=cfg.seed,
        causal=cfg.model.mode == "decoder",
        source=batch.source,
    )
    return lambda model: training_probes(model, inputs)


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
        extra: dict[str, Any] = {"resume": state} if state is not None else {}  # from scratch: the call it was
        if cfg.train.probes:
            extra["probe"] = training_probe(cfg)
        result = train(cfg.model, cfg.task, cfg.train, cfg.seed, **extra)
        return RunOutcome(
            run_id,
            True,
            result.final,
            result.curves,
            wall_s=time.perf_counter() - t0,
            checkpoint=checkpoint_bytes(result.model) if result.model is not None else b"",
            state=to_bytes(result.state) if result.state is not None else b"",
            resumed_from=state.step if state is not None else 0,
            snapshots={step: checkpoint_bytes(weights) for step, weights in result.snapshots.items()},
            **where,
        )
    except Exception as exc:  # one failing run must not stop its sweep: record the error instead
        detail = "".join(traceback.format_exception(exc))
        return RunOutcome(
            run_id, False, error=f"{type(exc).__name__}: {exc}\n{detail}", wall_s=time.perf_counter() - t0, **where
        )
