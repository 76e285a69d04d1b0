"""Arora et al. 2024, "Simple linear attention language models balance the recall-throughput tradeoff" (Based,
arXiv:2402.18668).

Based (a Taylor feature map of the softmax kernel plus a small sliding window) recalls far better than other
linear attentions at a fixed state size: on MQAR (their §3, Figure 2) it closes much of the gap to softmax that
elu+1 linear attention leaves. Tested on attnlab's MQAR at width 64: Based's accuracy minus elu+1's, over three
seeds at each one's best learning rate.
"""

from __future__ import annotations

from attnlab.claims.base import Arm, Claim, Paper, SweepExperiment
from attnlab.claims.sweeps import mqar_sweep
from attnlab.claims.verdict import Rule

PAPER = Paper(
    "Simple linear attention language models balance the recall-throughput tradeoff",
    "Arora et al.",
    2024,
    "2402.18668",
    "https://github.com/HazyResearch/based",
)

SWEEP = mqar_sweep("claims-based", [{"normaliser": "softmax"}, {"normaliser": "based"}, {"normaliser": "linear_elu"}])

CLAIMS = [
    Claim(
        name="based-recalls-better-than-linear",
        paper=PAPER,
        statement="On associative recall (MQAR) at a small width, Based is more accurate than elu+1 linear attention.",
        where="§3, Figure 2",
        experiment=SweepExperiment(SWEEP, "accuracy", Arm("based", "mqar"), Arm("linear_elu", "mqar")),
        rule=Rule("MQAR accuracy, Based − elu+1 linear attention", "greater", 0.0),
        scale_note=(
            "MQAR with 4 key-value pairs at length 32, width 64, 1600 steps; the paper sweeps widths 64–512 and "
            "lengths up to 512 with far longer training, where recall gaps are larger."
        ),
    ),
]
