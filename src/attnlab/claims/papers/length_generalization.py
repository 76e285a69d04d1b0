"""Zhou et al. 2024, "Transformers Can Achieve Length Generalization But Not Robustly" (arXiv:2402.09371).

With the digits reversed and an index hint before each digit naming its significance, a transformer trained on
short additions generalises to longer ones, which the reversed format alone does not (abstract; the paper's
best results also need FIRE positions). Tested on addition trained at 3 digits and evaluated at 6 (``_arithmetic``,
RoPE, three seeds): per-digit accuracy at 2× the training length, index hints − reversed. About 5 minutes on 2
cores (the sweep shared with the positional-description claim).
"""

from __future__ import annotations

from attnlab.claims.base import Claim, Paper, SweepExperiment
from attnlab.claims.papers._arithmetic import SCALE, SWEEP, fmt
from attnlab.claims.papers._paired import paired
from attnlab.claims.verdict import Rule

PAPER = Paper("Transformers Can Achieve Length Generalization But Not Robustly", "Zhou et al.", 2024, "2402.09371")

CLAIMS = [
    Claim(
        name="index-hints-generalise-in-length",
        paper=PAPER,
        statement="Index hints let addition trained on short operands stay accurate on operands twice as long, "
        "better than the reversed format alone.",
        where="abstract",
        experiment=SweepExperiment(SWEEP, derive=paired("accuracy@2x", fmt("index_hints"), fmt("reversed"))),
        rule=Rule("per-digit answer accuracy at 6 digits (trained at 3), index hints − reversed", "greater", 0.0),
        scale_note=SCALE + " With RoPE, not FIRE: the paper finds index hints need FIRE to generalise robustly.",
    ),
]
