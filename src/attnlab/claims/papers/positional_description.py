"""Shen et al. 2023, "Positional Description Matters for Transformers Arithmetic" (arXiv:2311.14737).

How a digit's position is described decides whether a small transformer learns arithmetic: writing the numbers least
significant digit first (so each answer digit depends on digits already seen, and the carry flows in the order of
generation) makes addition learnable where the plain order is not (abstract). Tested on addition of 3-digit
numbers (``_arithmetic``, three seeds): per-digit accuracy of the answer at the training length, reversed − plain.
About 5 minutes on 2 cores (the sweep shared with the index-hint claim).
"""

from __future__ import annotations

from attnlab.claims.base import Claim, Paper, SweepExperiment
from attnlab.claims.papers._arithmetic import SCALE, SWEEP, fmt
from attnlab.claims.papers._paired import paired
from attnlab.claims.verdict import Rule

PAPER = Paper("Positional Description Matters for Transformers Arithmetic", "Shen et al.", 2023, "2311.14737")

CLAIMS = [
    Claim(
        name="reversed-digits-learn-addition",
        paper=PAPER,
        statement="Writing the digits least significant first makes addition more accurate than the plain order.",
        where="abstract",
        experiment=SweepExperiment(SWEEP, derive=paired("accuracy", fmt("reversed"), fmt("plain"))),
        rule=Rule("per-digit answer accuracy on 3-digit addition, reversed − plain", "greater", 0.0),
        scale_note=SCALE,
    ),
]
