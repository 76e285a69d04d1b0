"""The speed benchmark: time and peak memory of every mechanism × backend, and training throughput.

Correctness first: every case is checked against attnlab's reference before it is timed (``timing``); then
forward and forward + backward are timed interleaved in one process (``timing``), peak memory is measured in one
subprocess per case (``memory``), and a small TransformerLM's training throughput is measured (``training``).
``cases`` defines what is measured, ``targets`` what it is held to, ``tables`` what is printed and drawn, and
``run`` puts it together (``run_speed``; ``attnlab speed`` and ``bench/speed.py`` on the command line).
"""

from attnlab.benchmarks.speed.cases import (
    HEAD_DIM,
    HEADS,
    LENGTHS,
    MODES,
    QUICK_CASES,
    QUICK_LENGTHS,
    Case,
    all_cases,
    select_cases,
    xt_available,
)
from attnlab.benchmarks.speed.memory import memory_available, proc_status_kib, reset_peak_rss
from attnlab.benchmarks.speed.run import SpeedResults, run_speed
from attnlab.benchmarks.speed.timing import check_cases, time_cases
from attnlab.benchmarks.speed.training import train_flops_per_token

__all__ = [
    "HEADS",
    "HEAD_DIM",
    "LENGTHS",
    "MODES",
    "QUICK_CASES",
    "QUICK_LENGTHS",
    "Case",
    "SpeedResults",
    "all_cases",
    "check_cases",
    "memory_available",
    "proc_status_kib",
    "reset_peak_rss",
    "run_speed",
    "select_cases",
    "time_cases",
    "train_flops_per_token",
    "xt_available",
]
