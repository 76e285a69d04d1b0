"""KV-cache policies on SmolLM2-135M, measured once for every KV-cache claim (a leading underscore: not a paper
module).

kvpress's protocol (``attnlab longctx kv smollm2``, ``experiments.longctx_kv``): a 4096-token prompt of CPython's
documentation goes through the model once, each policy compresses the cache at ratio r (the fraction of key/value
pairs removed) and the model continues: perplexity of the next 256 tokens, and passkey exact match with the needle
at depths 0, 0.25, 0.5, 0.75 and 1 (one prompt each). Ratios 0.5 and 0.75, every policy, original positions, one
deterministic run. The claims read their effects from this one measurement (``key``), so it runs once.

Time, from the default command's 4096-token half (docs/kv_policies.md, 2 cores): its prompt passes printed 17 s
(perplexity) + 101 s (five passkey prompts) and its cells sum to about 370 s over three ratios; with two ratios,
about 6 minutes on 2 cores.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from attnlab.claims.base import Claim, FunctionExperiment, Measurement, Paper
from attnlab.claims.verdict import Rule

LENGTH = 4096
RATIOS = (0.5, 0.75)
POLICIES = ("streaming", "h2o", "recent", "snapkv", "pyramidkv", "tova", "taskkv", "recycled")
KEY = "kv-policies-smollm2-4096"
SEEDS = "none: one deterministic run (one text; one passkey prompt per needle depth, 5 depths)"
SCALE = (
    "SmolLM2-135M at 4096 tokens on one text (perplexity of 256 tokens) and 5 passkey prompts, one per depth, so a "
    "passkey score moves in steps of 0.2; the papers evaluate 7B+ models on LongBench, RULER or needle-in-a-haystack "
    "up to 128k tokens."
)


def kv_policies() -> Measurement:
    """Every policy at every ratio, and the full cache, on both tasks: one row per (task, policy, ratio)."""
    from attnlab.experiments.longctx_kv import longctx_kv_table
    from attnlab.lens.pretrained.smollm2 import load_smollm2

    model, tok = load_smollm2()
    rows = longctx_kv_table(model, tok, [LENGTH], RATIOS, POLICIES)
    table: list[dict[str, object]] = [
        {"task": r.task, "policy": r.policy, "ratio": r.ratio, "kept": r.kept, "score": r.score, "by depth": r.by_depth}
        for r in rows
    ]
    return Measurement(rows=table)


def score(m: Measurement, task: str, policy: str, ratio: float) -> float:
    """The stored score of ``policy`` (or ``"full"``, at any ratio) at ``ratio`` on ``task``; NaN if absent."""
    for row in m.rows:
        if row["task"] == task and row["policy"] == policy and (policy == "full" or row["ratio"] == ratio):
            return float(row["score"])  # type: ignore[arg-type]
    return math.nan


def log_ppl_gap(m: Measurement, worse: str, better: str, ratio: float) -> float:
    """log perplexity of ``worse`` − that of ``better`` (either may be ``"full"``): > 0 when ``better`` is better."""
    return math.log(score(m, "ppl", worse, ratio)) - math.log(score(m, "ppl", better, ratio))


def passkey_gap(m: Measurement, a: str, b: str, ratio: float) -> float:
    """Passkey exact match of ``a`` − that of ``b`` (either may be ``"full"``)."""
    return score(m, "passkey", a, ratio) - score(m, "passkey", b, ratio)


def kv_view(
    task: str, policies: tuple[str, ...], effect: Callable[[Measurement], float]
) -> Callable[[Measurement], Measurement]:
    """What one claim reads of the shared measurement: its effect (exact), the rows and curves of its policies."""

    def view(m: Measurement) -> Measurement:
        mine = [r for r in m.rows if r["task"] == task and r["policy"] in ("full", *policies)]
        series = {
            p: sorted((float(r["ratio"]), float(r["score"])) for r in mine if r["policy"] == p)  # type: ignore[arg-type]
            for p in policies
        }
        series["full"] = [(ratio, score(m, task, "full", 0.0)) for ratio in RATIOS]
        ylabel = "perplexity" if task == "ppl" else "passkey exact match"
        return Measurement(exact=effect(m), rows=mine, series=series, xlabel="compression ratio", ylabel=ylabel)

    return view


def kv_claim(
    name: str,
    paper: Paper,
    statement: str,
    where: str,
    rule: Rule,
    task: str,
    policies: tuple[str, ...],
    effect: Callable[[Measurement], float],
    scale_note: str = SCALE,
) -> Claim:
    """A claim read off the shared KV-cache measurement (``task``: ``"ppl"`` or ``"passkey"``)."""
    experiment = FunctionExperiment(kv_policies, seeds=SEEDS, key=KEY, view=kv_view(task, policies, effect))
    return Claim(name, paper, statement, where, experiment, rule, scale_note)
