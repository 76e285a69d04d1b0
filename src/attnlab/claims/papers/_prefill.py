"""Sparse prefill on SmolLM2-135M, measured once for the MInference and HiP claims (a leading underscore: not a
paper module).

``attnlab longctx prefill smollm2`` (``experiments.sparse_prefill.prefill_table``) at 4096 tokens of CPython's
documentation with a budget of 1024 keys per query: the dense pass, MInference's vertical-slash pattern and HiP's
hierarchical top-k replacing every layer's attention (exact perplexity), and each pattern's attention time over all
layers against dense SDPA on the same q, k, v (3 rounds, medians, index estimation included). One deterministic run.

Time, from the README's 4096-token run on 2 loaded cores: a timing round costs dense 17.8 s + vertical-slash
48.8 s + HiP 36.3 s (kernel + estimation), so three rounds about 5 minutes; with the dense pass and two pattern
passes, about 8 minutes on 2 cores.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from attnlab.claims.base import Claim, FunctionExperiment, Measurement, Paper
from attnlab.claims.verdict import Rule

LENGTH, KEYS, REPEATS = 4096, 1024, 3
PATTERNS = ("dense", "vertical-slash", "hip")
KEY = "sparse-prefill-smollm2-4096"
SEEDS = "none: one deterministic run (timings: medians of 3 rounds)"
SCALE = (
    "SmolLM2-135M at 4096 tokens on 2 CPU cores with a compiled block-sparse CPU kernel; the papers prefill "
    "100k–1M tokens on GPUs, where attention dominates the cost and the patterns keep a far smaller share of it."
)


def sparse_prefill() -> Measurement:
    """One row per pattern: the share of tiles computed, the times, the speed-up and the perplexity ratio."""
    from attnlab.experiments.sparse_prefill import prefill_table
    from attnlab.lens.pretrained.smollm2 import load_smollm2

    model, tok = load_smollm2()
    rows = prefill_table(model, tok, [LENGTH], PATTERNS, [KEYS], repeats=REPEATS, log=lambda _: None)
    table: list[dict[str, object]] = [
        {
            "pattern": r.pattern,
            "computed": r.density,
            "dense s": r.dense_s,
            "kernel s": r.kernel_s,
            "build s": r.build_s,
            "speed-up": r.speedup,
            "ppl": r.perplexity,
            "ppl / dense": r.ppl_ratio,
        }
        for r in rows
    ]
    return Measurement(rows=table)


def column(m: Measurement, pattern: str, name: str) -> float:
    """``name`` of ``pattern``'s row; NaN if the pattern is absent."""
    found = [float(r[name]) for r in m.rows if r["pattern"] == pattern]  # type: ignore[arg-type]
    return found[0] if found else math.nan


def prefill_claim(
    name: str,
    paper: Paper,
    statement: str,
    where: str,
    rule: Rule,
    effect: Callable[[Measurement], float],
    scale_note: str = SCALE,
) -> Claim:
    """A claim read off the shared sparse-prefill measurement."""

    def view(m: Measurement) -> Measurement:
        series = {
            "ppl / dense against computed share": [
                (column(m, p, "computed"), column(m, p, "ppl / dense")) for p in PATTERNS
            ]
        }
        return Measurement(
            exact=effect(m), rows=m.rows, series=series, xlabel="share of tiles computed", ylabel="perplexity / dense"
        )

    experiment = FunctionExperiment(sparse_prefill, seeds=SEEDS, key=KEY, view=view)
    return Claim(name, paper, statement, where, experiment, rule, scale_note)
