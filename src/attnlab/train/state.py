"""The whole state of a training run at a step, so that another process continues it exactly.

A run with ``TrainConfig.stop_at`` (an intermediate rung of the learning-rate search, ``attnlab.runner.search``)
hands back a ``TrainState``; a run of the same config with a later ``stop_at`` (or none) that is given it trains on
from the next step, and its results are bitwise those of the run that never stopped (on the same machine and
thread count): the same weights, AdamW moments and step counts, gradient scale, random-number generators and
learning-rate schedule (``lr_at`` over ``steps``, not over ``stop_at``), and batches that are a function of the
step alone (``Task.train_batch``). The curves so far travel with it, so the continued run's curves start at step 1.

A run that stopped early at its target accuracy (``finished``) has nothing left to train: a continuation records
its final metrics and curves as they are, as the run that never stopped would have.

On disk and between processes a state is one safetensors file (``to_bytes`` / ``from_bytes``): the tensors (model,
optimiser moments, generator states) as tensors, everything else as JSON in the file's metadata. Loading it runs no
pickle (the safetensors format, https://github.com/huggingface/safetensors), so a state file from elsewhere cannot
execute code.
"""

from __future__ import annotations

import json
import random
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

FORMAT = 1  # bump when the layout changes; an older state is then retrained from scratch, never misread
META_KEY = "attnlab_train_state"


class StateMismatch(ValueError):
    """A state that does not belong to this run (another training config, a layout this version cannot read)."""


@dataclass
class TrainState:
    """A run at ``step``: what ``fit`` needs to train on from ``step + 1`` as if it had never stopped."""

    step: int
    finished: bool  # stopped early at the target accuracy: nothing left to train
    train_config: str  # the TrainConfig's canonical JSON without stop_at: a continuation must have the same
    curves: list[tuple[int, str, float]]
    metrics: dict[str, float]  # the last evaluation's
    train_s: float  # training time so far
    model: dict[str, torch.Tensor]
    optimizer: dict[int, dict[str, torch.Tensor]]  # AdamW's per-parameter state (its param_groups come from cfg)
    scaler: dict[str, Any]  # the fp16 gradient scaler's state ({} when it is off)
    rng: dict[str, Any] = field(default_factory=dict)  # torch (CPU and CUDA), numpy and Python generators


def lineage_json(cfg_json: dict[str, Any]) -> str:
    """A TrainConfig's JSON without ``stop_at``: what a run and its continuations share."""
    return json.dumps({k: v for k, v in cfg_json.items() if k != "stop_at"}, sort_keys=True, separators=(",", ":"))


def capture(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    *,
    step: int,
    finished: bool,
    train_config: str,
    curves: list[tuple[int, str, float]],
    metrics: dict[str, float],
    train_s: float,
) -> TrainState:
    """The state of a run after ``step`` (copied to the CPU: the run may go on changing its own tensors)."""
    weights = {name: t.detach().to("cpu", copy=True).contiguous() for name, t in model.state_dict().items()}
    moments = {
        int(i): {k: v.detach().to("cpu", copy=True) for k, v in s.items() if isinstance(v, torch.Tensor)}
        for i, s in opt.state_dict()["state"].items()
    }
    rng: dict[str, Any] = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return TrainState(
        step, finished, train_config, list(curves), dict(metrics), train_s, weights, moments, scaler.state_dict(), rng
    )


def restore(
    state: TrainState,
    model: nn.Module,
    opt: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    *,
    train_config: str,
    until: int,
) -> None:
    """Put ``state`` into a freshly built model, optimiser and scaler, and the generators, to train on from it to
    step ``until``. ``StateMismatch``: the state belongs to another training config, or is past ``until``."""
    if state.train_config != train_config:
        raise StateMismatch(f"the state was trained under another config: {state.train_config} ≠ {train_config}")
    if state.step > until and not state.finished:
        raise StateMismatch(f"the state is at step {state.step}, past the run's last step {until}")
    model.load_state_dict(state.model)
    groups = opt.state_dict()["param_groups"]  # the config's own: lr is set every step, the rest is cfg's
    opt.load_state_dict({"state": {i: dict(s) for i, s in state.optimizer.items()}, "param_groups": groups})
    if state.scaler:
        scaler.load_state_dict(state.scaler)
    torch.set_rng_state(state.rng["torch"])
    np.random.set_state(state.rng["numpy"])
    random.setstate(state.rng["python"])
    if "cuda" in state.rng and torch.cuda.is_available() and len(state.rng["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state.rng["cuda"])


def to_bytes(state: TrainState) -> bytes:
    """``state`` as one safetensors file: tensors as tensors, the rest as JSON metadata."""
    from safetensors.torch import save

    tensors = {f"model/{name}": t for name, t in state.model.items()}
    for i, moments in state.optimizer.items():
        tensors.update({f"optim/{i}/{k}": v.contiguous() for k, v in moments.items()})
    name, keys, pos, has_gauss, cached = state.rng["numpy"]
    version, mt, gauss_next = state.rng["python"]
    tensors["rng/torch"] = state.rng["torch"]
    tensors["rng/numpy"] = torch.from_numpy(np.asarray(keys, dtype=np.int64))
    tensors["rng/python"] = torch.tensor(mt, dtype=torch.int64)
    for i, cuda in enumerate(state.rng.get("cuda", [])):
        tensors[f"rng/cuda/{i}"] = cuda
    meta = {
        "format": FORMAT,
        "step": state.step,
        "finished": state.finished,
        "train_config": state.train_config,
        "curves": state.curves,
        "metrics": state.metrics,
        "train_s": state.train_s,
        "scaler": state.scaler,
        "numpy": [name, int(pos), int(has_gauss), float(cached)],
        "python": [version, gauss_next],
        "cuda": len(state.rng.get("cuda", [])),
    }
    return save(tensors, metadata={META_KEY: json.dumps(meta)})


def from_bytes(data: bytes) -> TrainState:
    """The state ``to_bytes`` wrote; ``StateMismatch`` for bytes that are not one this version can read."""
    from safetensors.torch import load

    try:
        (size,) = struct.unpack("<Q", data[:8])
        meta = json.loads(json.loads(data[8 : 8 + size])["__metadata__"][META_KEY])
        tensors = load(data)
    except Exception as exc:  # truncated, not safetensors, not ours
        raise StateMismatch(f"not an attnlab training state: {type(exc).__name__}: {exc}") from None
    if meta.get("format") != FORMAT:
        raise StateMismatch(f"training state format {meta.get('format')}, this version reads {FORMAT}")
    model = {k.removeprefix("model/"): v for k, v in tensors.items() if k.startswith("model/")}
    optimizer: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optim/"):
            _, index, name = key.split("/", 2)
            optimizer.setdefault(int(index), {})[name] = value
    name, pos, has_gauss, cached = meta["numpy"]
    version, gauss_next = meta["python"]
    rng: dict[str, Any] = {
        "torch": tensors["rng/torch"],
        "numpy": (name, tensors["rng/numpy"].numpy().astype(np.uint32), pos, has_gauss, cached),
        "python": (version, tuple(int(v) for v in tensors["rng/python"].tolist()), gauss_next),
    }
    if meta["cuda"]:
        rng["cuda"] = [tensors[f"rng/cuda/{i}"] for i in range(meta["cuda"])]
    curves = [(int(s), str(n), float(v)) for s, n, v in meta["curves"]]
    return TrainState(
        meta["step"],
        meta["finished"],
        meta["train_config"],
        curves,
        meta["metrics"],
        meta["train_s"],
        model,
        dict(sorted(optimizer.items())),
        meta["scaler"],
        rng,
    )
