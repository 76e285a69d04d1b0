"""Qin et al. 2024, "Lightning Attention-2: A Free Lunch for Handling Unlimited Sequence Lengths in Large Language
Models" (arXiv:2401.04658).

Lightning attention computes linear attention in blocks (softmax-free intra-block products, a running state across
blocks), so its training speed per token stays constant as sequences grow (abstract, §4, Figure 1), unlike
softmax attention's, which grows with the length. Tested by timing one layer's forward and backward pass on this
CPU at 512 and 4096 tokens (attnlab's chunked path): the time per token at 4096 over that at 512, three
independent measurements.
"""

from __future__ import annotations

from attnlab.claims.base import Claim, FunctionExperiment, Measurement, Paper
from attnlab.claims.papers._timing import layer_seconds
from attnlab.claims.verdict import Rule

PAPER = Paper(
    "Lightning Attention-2: A Free Lunch for Handling Unlimited Sequence Lengths in Large Language Models",
    "Qin et al.",
    2024,
    "2401.04658",
    "https://github.com/OpenNLPLab/lightning-attention",
)
SHORT, LONG, REPEATS = 512, 4096, 3
LIGHTNING = {"normaliser": "lightning", "backend": "chunked"}


def per_token_growth() -> Measurement:
    """Per repeat: (time per token at LONG) / (time per token at SHORT), forward + backward."""
    values, rows = {}, []
    for repeat in range(REPEATS):
        short = layer_seconds(LIGHTNING, SHORT, backward=True) / SHORT
        long = layer_seconds(LIGHTNING, LONG, backward=True) / LONG
        values[repeat] = long / short
        rows.append({"repeat": repeat, f"µs/token at {SHORT}": short * 1e6, f"µs/token at {LONG}": long * 1e6})
    series = {"per-token time ratio": [(float(r), v) for r, v in values.items()]}
    return Measurement(values=values, rows=rows, series=series, xlabel="repeat", ylabel=f"ratio {LONG} / {SHORT}")


CLAIMS = [
    Claim(
        name="lightning-constant-speed-per-token",
        paper=PAPER,
        statement="Lightning attention trains at a constant speed per token as sequences grow.",
        where="abstract, §4, Figure 1",
        experiment=FunctionExperiment(per_token_growth, seeds="3 repeated timings"),
        rule=Rule(f"time per token at {LONG} tokens / at {SHORT} (one layer, forward + backward)", "less", 1.5),
        scale_note="One layer of width 64 on 2 CPU cores (PyTorch tiles, no fused kernel); the paper times Triton "
        "kernels on A100 GPUs. Timings on a shared machine are noisy: three repeats give the interval.",
    ),
]
