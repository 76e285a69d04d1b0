"""Gao & Spratling 2025, "Softplus Attention with Re-weighting Boosts Length Extrapolation in Large Language
Models" (LSSA and its re-weighted form LSSAR, arXiv:2501.13428; code iminfine/freeatten, named in the v2 abstract;
the ICML 2026 version adds a third author, Gionfrida).

LSSA replaces the exponential by softplus and scales scores by log n; LSSAR sharpens the weights by a power. The
paper's headline is that LSSA beats softmax across inference lengths and LSSAR keeps the validation loss nearly flat
at 16× the training length while softmax's rises (abstract; Figure 1, in the introduction, compares softmax and
LSSAR across inference lengths). Tested by training byte-level language models at length 32 and evaluating at 16× (512).
"""

from __future__ import annotations

from attnlab.claims.base import Arm, Claim, Paper, SweepExperiment
from attnlab.claims.sweeps import lm_sweep
from attnlab.claims.verdict import Rule

PAPER = Paper(
    "Softplus Attention with Re-weighting Boosts Length Extrapolation in Large Language Models",
    "Gao & Spratling",
    2025,
    "2501.13428",
    "https://github.com/iminfine/freeatten",
)
SWEEP = lm_sweep(
    "claims-lssa",
    [{"normaliser": "softmax"}, {"normaliser": "lssa"}, {"normaliser": "lssar"}],
    length=32,
    extrapolate=(16.0,),
)
SCALE = "2 layers of width 64 trained on 32 bytes for 600 steps, against the paper's GPT-2-size models at 1024 tokens."
RULE = "held-out loss at 16× the training length (512 bytes), {} − softmax, nats/token"

CLAIMS = [
    Claim(
        name=f"{name}-extrapolates-16x",
        paper=PAPER,
        statement=f"At 16× the training length, {name.upper()} keeps a lower loss than softmax.",
        where="abstract, Figure 1",
        experiment=SweepExperiment(SWEEP, "loss@16x", Arm(name, "lm"), Arm("softmax", "lm")),
        rule=Rule(RULE.format(name.upper()), "less", 0.0),
        scale_note=SCALE,
    )
    for name in ("lssa", "lssar")
]
