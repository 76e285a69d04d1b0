"""Arora et al. 2024, "Simple linear attention language models balance the recall-throughput tradeoff" (Based,
arXiv:2402.18668).

Based (a Taylor feature map of the softmax kernel plus a small sliding window) recalls far better than other
linear attentions at a fixed state size: on MQAR (their §3, Figure 2) it closes much of the gap to softmax that
elu+1 linear attention leaves. Tested on attnlab's MQAR at width 64: Based's accuracy minus elu+1's, over three
seeds at each one's best learning rate.
"""

from __future__ import annotations

from attnlab.claims.base import Arm, Claim, Paper, SweepExperiment
from attnlab.claims.verdict import Rule
from attnlab.runner.config import SearchConfig, Sweep
from attnlab.train.config import TrainConfig

PAPER = Paper(
    "Simple linear attention language models balance the recall-throughput tradeoff",
    "Arora et al.",
    2024,
    "2402.18668",
    "https://github.com/HazyResearch/based",
)

SWEEP = Sweep(
    name="claims-based",
    tasks=[{"name": "mqar", "vocab": 64, "length": 32, "num_kv_pairs": 4}],
    mechanisms=[{"normaliser": "softmax"}, {"normaliser": "based"}, {"normaliser": "linear_elu"}],
    positions=["rope"],
    widths=[64],
    seeds=[0, 1, 2],
    search=SearchConfig(lrs=[1e-3, 3e-3], min_steps=400),
    model={"n_layers": 2, "n_heads": 4, "mlp": False},
    train=TrainConfig(steps=1600, batch_size=64, eval_every=100, eval_examples=256, target_accuracy=0.99),
)

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
