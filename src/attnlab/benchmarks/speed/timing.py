"""Correctness first, then time: every case against attnlab's reference, then interleaved wall-clock timing.

Time is measured forward (under ``torch.no_grad``) and forward + backward (``out.backward(dO)``), wall clock,
median of repeats. All cases of one T run in ONE process, interleaved (case A, B, C, …, then again), after one
warm-up call each (which is when flex compiles; its compile time is recorded separately). Ratios are to PyTorch's
SDPA softmax of the same T and mode: the floor. Before any timing, at a small T, every case's output is compared
with attnlab's reference of the same mechanism (max |Δ| / max |ref| ≤ 1e-4, float32); a case that fails is
reported and never timed.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from attnlab.benchmarks.speed.cases import HEAD_DIM, HEADS, MODES, AttnFn, Case
from attnlab.benchmarks.speed.rows import add_ratios, row, skip_row

CHECK_T = 128  # sequence length of the correctness check
CHECK_TOLERANCE = 1e-4


def make_inputs(t: int, seed: int = 0, device: torch.device | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """q, k, v (leaves requiring grad) and the upstream gradient dO, [1, H, T, D] float32, on ``device``.

    Drawn on the CPU from a seeded generator and then moved, so every device times the same numbers.
    """
    g = torch.Generator().manual_seed(seed)
    drawn = [torch.randn(1, HEADS, t, HEAD_DIM, generator=g, device="cpu") for _ in range(4)]
    q, k, v, d_out = (x.to(device or "cpu") for x in drawn)
    return q.requires_grad_(), k.requires_grad_(), v.requires_grad_(), d_out


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA and MPS run asynchronously; a CPU call has finished on return)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def runner(fn: AttnFn, inputs: tuple[Tensor, ...], mode: str) -> Callable[[], None]:
    """One timed call: the forward under no_grad, or forward then backward (gradients dropped after)."""
    q, k, v, d_out = inputs
    if mode == "forward":

        def forward() -> None:
            with torch.no_grad():
                fn(q, k, v)

        return forward

    def forward_backward() -> None:
        fn(q, k, v).backward(d_out)
        q.grad = k.grad = v.grad = None

    return forward_backward


def relative_error(actual: Tensor, expected: Tensor) -> float:
    return ((actual.double() - expected.double()).abs().max() / expected.double().abs().max()).item()


def check_cases(
    cases: Sequence[Case], t: int = CHECK_T, device: torch.device | None = None
) -> dict[str, dict[str, Any]]:
    """Every case's output vs the attnlab reference of its mechanism at length t (float32), on ``device``: each
    case builds its parameters there (``torch.device`` as the default device) and runs on tensors there."""
    device = device or torch.device("cpu")
    q, k, v, _ = make_inputs(t, seed=1, device=device)
    expected: dict[str, Tensor] = {}
    report: dict[str, dict[str, Any]] = {}
    with torch.no_grad(), device:
        for case in cases:
            if case.backend == "reference":
                expected[case.mechanism] = case.build(t)(q, k, v)
        for case in cases:
            ref = expected.get(case.mechanism)
            try:
                out = case.build(t)(q, k, v)
            except Exception as err:  # a case that cannot run is reported, not timed
                report[case.name] = {"ok": False, "error": f"{type(err).__name__}: {err}"}
                continue
            if ref is None:
                report[case.name] = {"ok": True, "error": None, "relative_error": None}
                continue
            err = relative_error(out, ref)
            report[case.name] = {"ok": err <= CHECK_TOLERANCE, "relative_error": err, "error": None}
    return report


def time_cases(
    cases: Sequence[Case],
    lengths: Sequence[int],
    repeats: int,
    long_repeats: int,
    dense_limit: int,
    echo: Callable[[str], None],
    device: torch.device | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Interleaved timing of every case at every length on ``device``: (rows, compile records).

    Each case builds its parameters on the device (it is the default device while they are made) and every timed
    call ends with ``synchronize``, so an asynchronous device is timed to the end of its work.
    """
    device = device or torch.device("cpu")
    with device:
        return _time_cases(cases, lengths, repeats, long_repeats, dense_limit, echo, device)


def _time_cases(
    cases: Sequence[Case],
    lengths: Sequence[int],
    repeats: int,
    long_repeats: int,
    dense_limit: int,
    echo: Callable[[str], None],
    device: torch.device,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    rows: list[dict[str, Any]] = []
    compiles: list[dict[str, Any]] = []
    for t in lengths:
        inputs = make_inputs(t, device=device)
        active: list[tuple[Case, dict[str, Callable[[], None]]]] = []
        for case in cases:
            if case.dense and t > dense_limit:
                rows += [skip_row(case, t, mode, f"dense T×T (T > {dense_limit})") for mode in MODES]
                continue
            fn = case.build(t)
            runs = {mode: runner(fn, inputs, mode) for mode in MODES}
            start = time.perf_counter()
            try:
                for run in runs.values():
                    run()  # warm-up (flex compiles here)
                synchronize(device)
            except Exception as err:
                rows += [skip_row(case, t, mode, f"{type(err).__name__}: {err}") for mode in MODES]
                continue
            if case.compiled:
                compiles.append({"case": case.name, "T": t, "warmup_s": time.perf_counter() - start})
            active.append((case, runs))
        n = repeats if t <= 2048 else long_repeats
        samples: dict[tuple[str, str], list[float]] = {(c.name, m): [] for c, _ in active for m in MODES}
        for _ in range(n):
            for case, runs in active:  # A B C … A B C …: slow drifts of the machine hit every case alike
                for mode, run in runs.items():
                    start = time.perf_counter()
                    run()
                    synchronize(device)
                    samples[(case.name, mode)].append(time.perf_counter() - start)
        for case, _ in active:
            for mode in MODES:
                ts = samples[(case.name, mode)]
                rows.append(row(case, t, mode, median_s=statistics.median(ts), samples_s=ts))
        echo(f"  timed T={t}: {len(active)} cases × {n} repeats")
        del inputs
        gc.collect()
    add_ratios(rows, "median_s", "ratio_vs_sdpa")
    return rows, compiles
