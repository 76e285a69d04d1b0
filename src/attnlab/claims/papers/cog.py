"""Lv et al. 2024, "More Expressive Attention with Negative Weights" (Cog attention, arXiv:2411.07176).

Cog attention lets weights be negative (a signed normalisation of exp-scores); the authors keep softmax in the
first and last layers and report language models that beat softmax ones at equal steps (their §4, Table 1).
Tested with that layout on byte-level language modelling: 4 layers, Cog in the middle two.
"""

from __future__ import annotations

from attnlab.attention.config import AttentionConfig
from attnlab.claims.base import Arm, Claim, Paper, SweepExperiment
from attnlab.claims.sweeps import lm_sweep
from attnlab.claims.verdict import Rule

PAPER = Paper(
    "More Expressive Attention with Negative Weights",
    "Lv et al.",
    2024,
    "2411.07176",
    "https://github.com/trestad/CogAttn",
)
COG = {"normaliser": "cog", "edge_normaliser": "softmax"}
SWEEP = lm_sweep("claims-cog", [{"normaliser": "softmax"}, COG], n_layers=4)

CLAIMS = [
    Claim(
        name="cog-beats-softmax-lm",
        paper=PAPER,
        statement="Language models with Cog attention (softmax in the edge layers) reach a lower loss than softmax "
        "ones at equal steps.",
        where="abstract; §4, Table 1",
        experiment=SweepExperiment(
            SWEEP, "loss", Arm(AttentionConfig.model_validate(COG).label, "lm"), Arm("softmax", "lm")
        ),
        rule=Rule("held-out loss, Cog − softmax, nats/token", "less", 0.0),
        scale_note=(
            "4 layers of width 64, 600 steps on the Python standard library in bytes; the paper trains 141M–1.5B "
            "parameter models on billions of tokens. On MQAR Cog needed about 4000 steps to learn at all "
            "(docs/diagnosis.md), so a short budget may favour softmax."
        ),
    ),
]
