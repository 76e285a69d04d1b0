"""Peng et al. 2024, "YaRN: Efficient Context Window Extension of Large Language Models" (ICLR 2024,
arXiv:2309.00071; code jquesnelle/yarn).

Interpolating RoPE by frequency band (NTK-by-parts) with an attention temperature extends a model's context far
better than position interpolation (PI), which compresses every frequency alike, and even without fine-tuning it
keeps perplexity beyond the training length where plain RoPE breaks down (§3, the dynamic-scaling results of §3.3
and §4). Tested with ``attnlab intervene rope-scaling`` (``experiments.rope_scaling``) on SmolLM2-135M, same
weights, no fine-tuning, trained at 8192 tokens: one pass over 16 384 tokens of CPython's documentation per method
(plain RoPE, PI ×2, YaRN ×2), perplexity over the predictions at positions 8192–16 382, all beyond the training
length. One deterministic run.

Time: three passes over 16 384 tokens. A 4096-token pass of SmolLM2 printed 17 s on 2 cores (docs/kv_policies.md);
at 4× the length the attention costs 16× and the rest 4×, so at most about 4.5 minutes a pass, 14 minutes in all.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from attnlab.claims.base import Claim, FunctionExperiment, Measurement, Paper
from attnlab.claims.verdict import Rule

PAPER = Paper(
    "YaRN: Efficient Context Window Extension of Large Language Models",
    "Peng et al.",
    2024,
    "2309.00071",
    "https://github.com/jquesnelle/yarn",
)
LENGTHS = (2048, 4096, 8192, 16384)
METHODS = (("none", 1.0), ("pi", 2.0), ("yarn", 2.0))
KEY = "rope-scaling-smollm2-16k"
SCALE = (
    "SmolLM2-135M (trained at 8192 tokens) on one 16 384-token text, scale factor 2, no fine-tuning; the paper "
    "extends Llama 2 7B/13B to 64k–128k, mostly with 400 fine-tuning steps."
)


def rope_scaling_16k() -> Measurement:
    """Perplexity against length for plain RoPE, PI ×2 and YaRN ×2 (all from one 16k pass per method)."""
    from attnlab.experiments.rope_scaling import rope_scaling_table
    from attnlab.experiments.text import text_tokens
    from attnlab.lens.pretrained.smollm2 import load_smollm2

    model, tok = load_smollm2()
    rows = rope_scaling_table(model, text_tokens(tok, max(LENGTHS)), METHODS, LENGTHS)
    table: list[dict[str, object]] = [
        {
            "method": r.method,
            "factor": r.factor,
            "length": r.length,
            "ppl": r.perplexity,
            "ppl 2nd half": r.perplexity_second_half,
            "pass s": r.seconds,
        }
        for r in rows
    ]
    return Measurement(rows=table)


def beyond_training(m: Measurement, method: str) -> float:
    """Perplexity of ``method`` over the second half of the 16 384-token pass: positions 8192 on, beyond training."""
    found = [float(r["ppl 2nd half"]) for r in m.rows if r["method"] == method and r["length"] == max(LENGTHS)]  # type: ignore[arg-type]
    return found[0] if found else math.nan


def _view(worse: str) -> Callable[[Measurement], Measurement]:
    def view(m: Measurement) -> Measurement:
        series = {
            name: [(float(r["length"]), float(r["ppl"])) for r in m.rows if r["method"] == name]  # type: ignore[arg-type]
            for name, _ in METHODS
        }
        effect = math.log(beyond_training(m, worse)) - math.log(beyond_training(m, "yarn"))
        return Measurement(exact=effect, rows=m.rows, series=series, xlabel="context length", ylabel="perplexity")

    return view


def _claim(name: str, statement: str, where: str, worse: str, label: str) -> Claim:
    return Claim(
        name=name,
        paper=PAPER,
        statement=statement,
        where=where,
        experiment=FunctionExperiment(
            rope_scaling_16k, seeds="none: one deterministic run", key=KEY, view=_view(worse)
        ),
        rule=Rule(
            f"log perplexity at positions 8192–16 382, {label} − YaRN ×2 (SmolLM2-135M, no fine-tuning)", "greater", 0.1
        ),
        scale_note=SCALE,
    )


CLAIMS = [
    _claim(
        "yarn-beats-pi-without-finetuning",
        "Without fine-tuning, YaRN keeps a much lower perplexity beyond the training length than position "
        "interpolation at the same scale factor.",
        "§3.1–3.3",
        "pi",
        "PI ×2",
    ),
    _claim(
        "yarn-extends-rope-without-finetuning",
        "Without fine-tuning, YaRN keeps perplexity low beyond the training length, where plain RoPE's rises.",
        "§3.3, §4",
        "none",
        "plain RoPE",
    ),
]
