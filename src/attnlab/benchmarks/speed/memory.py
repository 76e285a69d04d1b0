"""Peak memory of each case: on the CPU in a fresh subprocess per case (Linux ``/proc``); on a GPU in process.

glibc is told to return every block above 64 KiB to the OS (``MALLOC_MMAP_THRESHOLD_=65536``), so resident memory
tracks live tensors. For each T and mode: one warm-up call, then the kernel's resident-set high-water mark is reset
(``/proc/self/clear_refs``, see proc(5)), one call runs and the peak is read (``VmHWM``). Reported: peak minus the
resident set just before the call, which already holds q, k, v and dO, i.e. what the call itself needs (output,
saved activations, gradients, workspace).

On CUDA the allocator counts every byte itself: ``torch.cuda.max_memory_allocated`` after
``reset_peak_memory_stats``, minus what was allocated just before the call (the same definition), in this
process (``measure_device_memory``).
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from attnlab.benchmarks.speed.cases import MODES, Case, all_cases
from attnlab.benchmarks.speed.rows import add_ratios, row, skip_row
from attnlab.benchmarks.speed.timing import make_inputs, runner, synchronize


def proc_status_kib(field_name: str) -> int:
    """A ``kB`` field of ``/proc/self/status`` (``VmRSS``: resident now; ``VmHWM``: its high-water mark)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field_name}")


def reset_peak_rss() -> None:
    """Reset this process's resident-set high-water mark (VmHWM) to its current resident set (Linux ≥ 4.0)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def memory_worker(spec_json: str) -> None:
    """Subprocess entry: peak memory of some cases at every length and mode, printed as one JSON line."""
    spec = json.loads(spec_json)
    torch.set_num_threads(spec["threads"])
    known = {c.name: c for c in all_cases(flex=spec["flex"], xt=spec["xt"])}
    out = []
    for name in spec["cases"]:
        case = known[name]
        for t in spec["lengths"]:
            if case.dense and t > spec["dense_limit"]:
                continue
            inputs = make_inputs(t)
            fn = case.build(t)
            for mode in MODES:
                run = runner(fn, inputs, mode)
                run()  # warm-up: compilation and first-touch allocations are not the call's memory
                gc.collect()
                reset_peak_rss()
                before = proc_status_kib("VmRSS")
                run()
                peak = proc_status_kib("VmHWM")
                out.append({"case": name, "T": t, "mode": mode, "peak_mib": (peak - before) / 1024})
            del inputs, fn
            gc.collect()
    print("MEMORY " + json.dumps(out))


def memory_available(device: torch.device | None = None) -> str | None:
    """None if peak memory can be measured on ``device`` (default the CPU), else why not."""
    if device is not None and device.type == "cuda":
        return None
    if device is not None and device.type != "cpu":
        return f"no peak-memory counter for {device.type} in this benchmark (CPU and CUDA only)"
    if not sys.platform.startswith("linux"):
        return f"needs Linux /proc (this is {sys.platform})"
    try:
        reset_peak_rss()
    except OSError as err:
        return f"cannot reset the RSS high-water mark: {err}"
    return None


def measure_memory(
    cases: Sequence[Case],
    lengths: Sequence[int],
    dense_limit: int,
    flex: bool,
    xt: bool,
    echo: Callable[[str], None],
    one_process: bool = False,
) -> list[dict[str, Any]]:
    """Peak-memory rows for every case, each case in a fresh subprocess (or all in one: ``one_process``)."""
    rows: list[dict[str, Any]] = []
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", HF_HUB_OFFLINE="1")
    src = str(Path(__file__).resolve().parents[3])  # src/attnlab/benchmarks/speed/memory.py → src
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    groups = [list(cases)] if one_process else [[c] for c in cases]
    for group in groups:
        spec = {
            "cases": [c.name for c in group],
            "lengths": list(lengths),
            "threads": torch.get_num_threads(),
            "dense_limit": dense_limit,
            "flex": flex and any(c.compiled for c in group),
            "xt": xt and any(c.backend == "x-transformers" for c in group),
        }
        code = "import sys; from attnlab.benchmarks.speed.memory import memory_worker; memory_worker(sys.argv[1])"
        proc = subprocess.run(
            [sys.executable, "-c", code, json.dumps(spec)], capture_output=True, text=True, env=env, timeout=3600
        )
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("MEMORY ")]
        label = ", ".join(spec["cases"])
        if proc.returncode != 0 or not lines:
            reason = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            rows += [
                skip_row(c, t, m, f"memory worker failed: {reason}") for c in group for t in lengths for m in MODES
            ]
            echo(f"  memory {label}: failed ({reason})")
            continue
        measured = {(r["case"], r["T"], r["mode"]): r["peak_mib"] for r in json.loads(lines[-1][len("MEMORY ") :])}
        for case in group:
            for t in lengths:
                for mode in MODES:
                    peak = measured.get((case.name, t, mode))
                    if peak is None:
                        rows.append(skip_row(case, t, mode, f"dense T×T (T > {dense_limit})"))
                    else:
                        rows.append(row(case, t, mode, peak_mib=peak))
        echo(f"  memory {label}: done")
    add_ratios(rows, "peak_mib", "ratio_vs_sdpa")
    return rows


def measure_device_memory(
    cases: Sequence[Case], lengths: Sequence[int], dense_limit: int, echo: Callable[[str], None], device: torch.device
) -> list[dict[str, Any]]:
    """Peak-memory rows on a CUDA device, in this process: the allocator's peak during one call (after a warm-up
    call) minus what was allocated before it."""
    rows: list[dict[str, Any]] = []
    with device:
        for case in cases:
            for t in lengths:
                if case.dense and t > dense_limit:
                    rows += [skip_row(case, t, mode, f"dense T×T (T > {dense_limit})") for mode in MODES]
                    continue
                inputs = make_inputs(t, device=device)
                fn = case.build(t)
                for mode in MODES:
                    run = runner(fn, inputs, mode)
                    try:
                        run()  # warm-up: compilation and workspaces are not the call's memory
                    except Exception as err:
                        rows.append(skip_row(case, t, mode, f"{type(err).__name__}: {err}"))
                        continue
                    synchronize(device)
                    torch.cuda.reset_peak_memory_stats(device)
                    before = torch.cuda.memory_allocated(device)
                    run()
                    synchronize(device)
                    peak = torch.cuda.max_memory_allocated(device)
                    rows.append(row(case, t, mode, peak_mib=(peak - before) / 2**20))
                del inputs, fn
                gc.collect()
            echo(f"  memory {case.name}: done")
    add_ratios(rows, "peak_mib", "ratio_vs_sdpa")
    return rows
