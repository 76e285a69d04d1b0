"""The benchmark's targets: each with its measured value and whether it holds (None: not measured).

Softmax-family variants against plain SDPA softmax at T = 2048 (their fastest attnlab backend counts), the chunked
non-softmax normalisers' time at T = 2048 and peak memory at T = 8192, kernel attention's chunked scan against
SDPA at T = 8192, and attnlab against x-transformers wherever x-transformers has the variant.
"""

from __future__ import annotations

from typing import Any

from attnlab.benchmarks.speed.cases import MODES
from attnlab.benchmarks.speed.rows import best_attnlab, lookup

SOFTMAX_VARIANTS = (  # the softmax-family variants of the issue, each against plain SDPA softmax
    "softmax+alibi",
    "softmax+t5",
    "softmax+softcap",
    "softmax+window",
    "softmax+sinks",
    "softmax+sinks_kv",
    "softmax+documents",
)
CHUNKED_NORMALISERS = ("cog", "sigmoid", "lssa", "lssar", "clipped_softmax")


def targets(time_rows: list[dict[str, Any]], memory_rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The issue's acceptance targets, each with its measured value and whether it holds (None: not measured)."""
    out: list[dict[str, Any]] = []
    fb = "forward+backward"

    def add(name: str, measured: float | None, limit: float, holds: bool | None, detail: str = "") -> None:
        out.append({"target": name, "measured": measured, "limit": limit, "holds": holds, "detail": detail})

    floor = lookup(time_rows, "softmax/sdpa", 2048, fb, "median_s")
    for mech in SOFTMAX_VARIANTS:  # the target is per variant: its fastest attnlab backend counts
        best = best_attnlab(time_rows, mech, 2048, fb, "median_s")
        r = best[1] / floor if (best and floor) else None
        holds = None if r is None else r <= 1.3
        add(f"T=2048 fwd+bwd {mech} ≤ 1.3× SDPA", r, 1.3, holds, f"attnlab {best[0]}" if best else "")
    for mech in CHUNKED_NORMALISERS:
        r = lookup(time_rows, f"{mech}/chunked", 2048, fb, "ratio_vs_sdpa")
        add(f"T=2048 fwd+bwd {mech}/chunked ≤ 2.5× SDPA", r, 2.5, None if r is None else r <= 2.5)
    for mech in CHUNKED_NORMALISERS:
        r = lookup(memory_rows, f"{mech}/chunked", 8192, fb, "ratio_vs_sdpa")
        add(f"T=8192 fwd+bwd peak memory {mech}/chunked ≤ 1.2× SDPA", r, 1.2, None if r is None else r <= 1.2)
    for mode in MODES:
        r = lookup(time_rows, "linear_elu/chunked", 8192, mode, "ratio_vs_sdpa")
        add(f"T=8192 {mode} linear_elu/chunked faster than SDPA", r, 1.0, None if r is None else r < 1.0)
    xt_mechs = sorted({r["mechanism"] for r in time_rows if r["backend"] == "x-transformers"})
    for mech in xt_mechs:
        xt_time = lookup(time_rows, f"{mech}/x-transformers", 2048, fb, "median_s")
        ours = best_attnlab(time_rows, mech, 2048, fb, "median_s")
        ratio = ours[1] / xt_time if (ours and xt_time) else None
        detail = f"attnlab {ours[0]}" if ours else ""
        holds = None if ratio is None else ratio <= 1.0
        add(f"T=2048 fwd+bwd {mech}: attnlab time ≤ x-transformers", ratio, 1.0, holds, detail)
        xt_mem = lookup(memory_rows, f"{mech}/x-transformers", 2048, fb, "peak_mib")
        ours_mem = best_attnlab(memory_rows, mech, 2048, fb, "peak_mib")
        ratio = ours_mem[1] / xt_mem if (ours_mem and xt_mem) else None
        detail = f"attnlab {ours_mem[0]}" if ours_mem else ""
        holds = None if ratio is None else ratio <= 1.0
        add(f"T=2048 fwd+bwd {mech}: attnlab peak memory ≤ x-transformers", ratio, 1.0, holds, detail)
    return out
