"""Ramapuram et al. 2024, "Theory, Analysis, and Best Practices for Sigmoid Self-Attention" (arXiv:2409.04431).

The paper's recipe is sigmoid attention with the bias b = −log n (n the sequence length): with it, sigmoid
matches softmax on language modelling (its §5, Figures 5–7); without it, training is worse or unstable at the
start (§3.2 and its ablations). Both claims run on one sweep: softmax, sigmoid with b = −log n and sigmoid with
b = 0, on byte-level language modelling of the Python standard library, three seeds, the learning rate searched.
"""

from __future__ import annotations

from attnlab.claims.base import Arm, Claim, Paper, SweepExperiment
from attnlab.claims.sweeps import lm_sweep
from attnlab.claims.verdict import Rule

PAPER = Paper(
    "Theory, Analysis, and Best Practices for Sigmoid Self-Attention",
    "Ramapuram et al.",
    2024,
    "2409.04431",
    "https://github.com/apple/ml-sigmoid-attention",
)

SWEEP = lm_sweep(
    "claims-sigmoid",
    [
        {"normaliser": "softmax"},
        {"normaliser": "sigmoid"},
        {"normaliser": "sigmoid", "normaliser_args": {"bias": 0.0}},
    ],
)
SCALE = (
    "2 layers, width 64, 600 steps of byte-level language modelling (T = 128) on 2 CPU cores, against the paper's "
    "language models of 85M parameters and more, trained for billions of tokens."
)

CLAIMS = [
    Claim(
        name="sigmoid-matches-softmax",
        paper=PAPER,
        statement="Sigmoid attention with the bias b = −log n matches softmax attention on language modelling.",
        where="§5, Figures 5–7",
        experiment=SweepExperiment(SWEEP, "loss", Arm("sigmoid", "lm"), Arm("softmax", "lm")),
        rule=Rule("held-out loss, sigmoid (b = −log n) − softmax, nats/token", "within", 0.05),
        scale_note=SCALE,
    ),
    Claim(
        name="sigmoid-needs-its-bias",
        paper=PAPER,
        statement="Without the bias b = −log n, sigmoid attention trains worse than with it.",
        where="§3.2, §5 (ablation of b)",
        experiment=SweepExperiment(SWEEP, "loss", Arm("sigmoid+bias=0.0", "lm"), Arm("sigmoid", "lm")),
        rule=Rule("held-out loss, sigmoid (b = 0) − sigmoid (b = −log n), nats/token", "greater", 0.0),
        scale_note=SCALE,
    ),
]
