"""``run_speed``: check, time, measure memory and training throughput, then write ``speed.json`` and the plots.

Dense cases (attnlab's reference, x-transformers' non-flash ``Attend`` and its T×T position biases) are skipped
above ``dense_limit`` (default 2048): every T×T×H float32 matrix is 128 MiB at T = 2048, 512 MiB at 4096 and
2 GiB at 8192, and a dense forward + backward keeps several, which on a 2-core machine takes minutes per call.

Threads: on a shared machine (other processes on the same cores) a multi-threaded call of many PyTorch ops waits
at every op for a descheduled worker thread, which punishes the chunked paths (many ops) far more than SDPA (one
op); ``threads=1`` measures per-core work instead, and the report says which was used.
"""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from attnlab.benchmarks.speed.cases import (
    HEAD_DIM,
    HEADS,
    LENGTHS,
    MODES,
    QUICK_CASES,
    QUICK_LENGTHS,
    SOFTCAP,
    WINDOW,
    XT_PIN,
    select_cases,
)
from attnlab.benchmarks.speed.memory import measure_device_memory, measure_memory, memory_available
from attnlab.benchmarks.speed.tables import plot, render
from attnlab.benchmarks.speed.targets import targets
from attnlab.benchmarks.speed.timing import check_cases, time_cases
from attnlab.benchmarks.speed.training import train_throughput
from attnlab.errors import ConfigError
from attnlab.report.plots import write_atomic
from attnlab.train.device import check_device, resolve_device


def machine(device: torch.device | None = None, native_status: bool = True) -> dict[str, Any]:
    """The CPU, core and thread counts, versions, load and the device timed; ``native_status``: also whether the
    compiled CPU kernels load (asking builds them on first use, about a minute)."""
    device = device or torch.device("cpu")
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "native_kernels": _native_status() if native_status else "not asked",
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
    }


def _native_status() -> str:
    """Whether the chunked backend ran on the compiled CPU kernels (``attnlab.attention.fast.native``)."""
    from attnlab.attention.fast import native

    reason = native.unavailable_reason()
    return "available" if reason is None else f"not used: {reason}"


@dataclass
class SpeedResults:
    """What ``run_speed`` measured (also written to ``out_dir/speed.json``)."""

    data: dict[str, Any]
    report: str  # the printed tables
    files: list[Path] = field(default_factory=list)


def run_speed(
    out_dir: Path,
    *,
    lengths: Sequence[int] | None = None,
    cases: Sequence[str] | None = None,
    repeats: int = 5,
    long_repeats: int = 3,
    dense_limit: int = 2048,
    memory: bool = True,
    train: bool = True,
    flex: bool = True,
    xt: bool = True,
    quick: bool = False,
    threads: int | None = None,
    device: str = "cpu",
    echo: Callable[[str], None] = print,
) -> SpeedResults:
    """Check, then time (interleaved, one process) and measure peak memory of attention cases; train throughput.

    ``quick``: T = 64, 128, two repeats, five cases, one thread, memory in one subprocess, a tiny training run:
    a smoke test of the whole pipeline. ``threads``: torch threads for the run (default: as set). Writes
    ``speed.json`` and PNG plots of time and memory vs T into ``out_dir``; returns them with the tables.
    ``device`` (``TrainConfig.device``'s values: auto, cpu, cuda, cuda:N, mps): where the cases' tensors and
    parameters live and run; one not present here is a one-line error.
    """
    where = resolve_device(check_device(device))
    if threads is not None and threads < 1:
        raise ConfigError("threads", threads, "must be at least 1", ">= 1")
    previous = torch.get_num_threads()
    torch.set_num_threads(threads or (1 if quick else previous))
    try:
        return _run_speed(
            out_dir, lengths, cases, repeats, long_repeats, dense_limit, memory, train, flex, xt, quick, echo, where
        )
    finally:
        torch.set_num_threads(previous)


def _run_speed(
    out_dir: Path,
    lengths: Sequence[int] | None,
    cases: Sequence[str] | None,
    repeats: int,
    long_repeats: int,
    dense_limit: int,
    memory: bool,
    train: bool,
    flex: bool,
    xt: bool,
    quick: bool,
    echo: Callable[[str], None],
    device: torch.device,
) -> SpeedResults:
    if repeats < 1 or long_repeats < 1:
        raise ConfigError("repeats", min(repeats, long_repeats), "must be at least 1", ">= 1")
    if quick:
        lengths = lengths or QUICK_LENGTHS
        if not cases:  # the quick cases need neither flex (compilation) nor x-transformers (a slow import)
            cases, flex, xt = QUICK_CASES, False, False
        repeats, long_repeats = min(repeats, 2), min(long_repeats, 2)
    lengths = sorted(set(lengths or LENGTHS))
    if any(t < 1 for t in lengths):
        raise ConfigError("lengths", lengths, "every length must be positive", ">= 1")
    out_dir.mkdir(parents=True, exist_ok=True)
    chosen = select_cases(cases, flex=flex, xt=xt)
    echo(
        f"speed on {device}: {len(chosen)} cases, T = {', '.join(map(str, lengths))}, {torch.get_num_threads()} threads"
    )
    info = machine(device)

    checks = check_cases(chosen, device=device)
    failed = [name for name, c in checks.items() if not c["ok"]]
    for name in failed:
        echo(f"  check FAILED {name}: {checks[name].get('error') or checks[name].get('relative_error')}")
    timed = [c for c in chosen if c.name not in failed]
    time_rows, compiles = time_cases(timed, lengths, repeats, long_repeats, dense_limit, echo, device)

    memory_rows: list[dict[str, Any]] = []
    memory_note = memory_available(device) if memory else "not requested"
    if memory_note is None and device.type == "cuda":
        memory_rows = measure_device_memory(timed, lengths, dense_limit, echo, device)
        memory_note = "in process: torch.cuda.max_memory_allocated during one call minus memory_allocated before it"
    elif memory_note is None:
        memory_rows = measure_memory(timed, lengths, dense_limit, flex, xt, echo, one_process=quick)
    train_data = train_throughput(quick, echo, device) if train else None
    info["load_average_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None

    data = {
        "machine": info,
        "shape": {"B": 1, "H": HEADS, "D": HEAD_DIM, "causal": True, "dtype": "float32"},
        "settings": {
            "lengths": lengths,
            "repeats": repeats,
            "long_repeats": long_repeats,
            "dense_limit": dense_limit,
            "window": WINDOW,
            "softcap": SOFTCAP,
            "x_transformers": XT_PIN,
        },
        "checks": checks,
        "timing": time_rows,
        "compile": compiles,
        "memory": memory_rows,
        "memory_method": memory_note
        or "per-case subprocess, MALLOC_MMAP_THRESHOLD_=65536, VmHWM reset via "
        "/proc/self/clear_refs, peak minus resident set before the call (inputs and dO already allocated)",
        "train": train_data,
        "targets": targets(time_rows, memory_rows),
    }
    report = render(data)
    echo(report)
    files = [out_dir / "speed.json"]
    write_atomic(files[0], json.dumps(data, indent=1).encode())  # a reader never sees half a file
    for mode in MODES:
        tag = mode.replace("+", "_")
        path = out_dir / f"time_{tag}.png"
        plot(time_rows, "median_s", mode, "seconds", path)
        files.append(path)
        if memory_rows:
            path = out_dir / f"memory_{tag}.png"
            plot(memory_rows, "peak_mib", mode, "peak MiB", path)
            files.append(path)
    echo(f"wrote {', '.join(str(f) for f in files)}")
    return SpeedResults(data, report, files)
