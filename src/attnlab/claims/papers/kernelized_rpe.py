"""Luo et al. 2021, "Stable, Fast and Accurate: Kernelized Attention with Relative Positional Encoding" (NeurIPS
2021, arXiv:2106.12566).

With a relative positional encoding the kernelized attention's position term is a Toeplitz matrix, so it can be
applied with the FFT in O(n log n) instead of O(n²) (abstract, §3.2). Tested by timing attnlab's FFT path of one layer's
forward pass at 1024 … 8192 tokens and fitting the exponent of time against length (log-log slope): near 1 for
n log n, 2 for a quadratic; three independent measurements.
"""

from __future__ import annotations

import numpy as np

from attnlab.claims.base import Claim, FunctionExperiment, Measurement, Paper
from attnlab.claims.papers._timing import layer_seconds
from attnlab.claims.verdict import Rule

PAPER = Paper(
    "Stable, Fast and Accurate: Kernelized Attention with Relative Positional Encoding",
    "Luo et al.",
    2021,
    "2106.12566",
)
LENGTHS, REPEATS = (1024, 2048, 4096, 8192), 3
FFT = {"normaliser": "kernel_rpe_fft", "backend": "fft"}


def time_exponent() -> Measurement:
    """Per repeat: the least-squares slope of log(time) against log(length)."""
    values, series = {}, {}
    for repeat in range(REPEATS):
        times = [layer_seconds(FFT, n, backward=False) for n in LENGTHS]
        values[repeat] = float(np.polyfit(np.log(LENGTHS), np.log(times), 1)[0])
        series[f"repeat {repeat}"] = [(float(n), t) for n, t in zip(LENGTHS, times, strict=True)]
    rows: list[dict[str, object]] = [{"repeat": r, "exponent": v} for r, v in values.items()]
    return Measurement(values=values, rows=rows, series=series, xlabel="tokens", ylabel="seconds (forward)")


CLAIMS = [
    Claim(
        name="kernelized-rpe-costs-n-log-n",
        paper=PAPER,
        statement="Kernelized attention with a relative positional encoding costs O(n log n) through the FFT.",
        where="abstract, §3.2",
        experiment=FunctionExperiment(time_exponent, seeds="3 repeated timings"),
        rule=Rule("exponent of forward time against length, 1024–8192 tokens", "less", 1.5),
        scale_note="One layer of width 64 on 2 CPU cores; at short lengths fixed costs flatten the slope, so the fit "
        "starts at 1024 tokens.",
    ),
]
