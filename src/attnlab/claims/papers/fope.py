"""Hua et al. 2025, "Fourier Position Embedding: Enhancing Attention's Periodic Extension for Length
Generalization" (FoPE, arXiv:2412.17739).

FoPE treats each RoPE dimension as a Fourier series and zeroes the frequencies too low to complete a period within
the training length, so attention extends periodically beyond it; the paper reports better perplexity and
retrieval than RoPE past the training length (§5, Figures 4–5). Tested by training byte-level language models at
length 64 and evaluating the held-out loss at 4× that length.
"""

from __future__ import annotations

from attnlab.claims.base import Arm, Claim, Paper, SweepExperiment
from attnlab.claims.sweeps import lm_sweep
from attnlab.claims.verdict import Rule

PAPER = Paper(
    "Fourier Position Embedding: Enhancing Attention's Periodic Extension for Length Generalization",
    "Hua et al.",
    2025,
    "2412.17739",
    "https://github.com/TsinghuaC3I/Fourier-Position-Embedding",
)
SWEEP = lm_sweep("claims-fope", [{"normaliser": "softmax"}], positions=("rope", "fope"), length=64, extrapolate=(4.0,))

CLAIMS = [
    Claim(
        name="fope-extrapolates-better-than-rope",
        paper=PAPER,
        statement="Beyond the training length, a model with FoPE has a lower loss than the same model with RoPE.",
        where="§5, Figures 4–5",
        experiment=SweepExperiment(SWEEP, "loss@4x", Arm("softmax", "lm", "fope"), Arm("softmax", "lm", "rope")),
        rule=Rule("held-out loss at 4× the training length (256 bytes), FoPE − RoPE, nats/token", "less", 0.0),
        scale_note="2 layers of width 64 trained at 64 bytes for 600 steps; the paper trains 60M–1.2B models at 512 "
        "tokens and evaluates up to 16× beyond.",
    ),
]
