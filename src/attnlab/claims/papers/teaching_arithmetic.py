"""Lee et al. 2023, "Teaching Arithmetic to Small Transformers" (arXiv:2307.03381; code
lee-ny/teaching_arithmetic).

The abstract's first finding: conventional training data is not the most effective for arithmetic, and simple
formatting changes improve accuracy a lot; the change they study first is writing the sum least significant digit
first ("reverse", §4), so that each answer digit depends on digits already generated and the carry flows in the
order of generation. Tested on addition of 3-digit numbers (``_arithmetic``, three seeds): per-digit accuracy of the
answer at the training length, reversed − plain. About 5 minutes on 2 cores (the sweep shared with the index-hint
claim). The task's formats also follow Shen et al. 2023 (arXiv:2311.14737), whose headline is about multiplication
and length generalisation with positional descriptions, not this comparison.
"""

from __future__ import annotations

from attnlab.claims.base import Claim, Paper, SweepExperiment
from attnlab.claims.papers._arithmetic import SCALE, SWEEP, fmt
from attnlab.claims.papers._paired import paired
from attnlab.claims.verdict import Rule

PAPER = Paper(
    "Teaching Arithmetic to Small Transformers",
    "Lee et al.",
    2023,
    "2307.03381",
    "https://github.com/lee-ny/teaching_arithmetic",
)

CLAIMS = [
    Claim(
        name="reversed-digits-learn-addition",
        paper=PAPER,
        statement="Writing the digits least significant first makes addition more accurate than the plain order.",
        where="abstract, §4 (reversed output)",
        experiment=SweepExperiment(SWEEP, derive=paired("accuracy", fmt("reversed"), fmt("plain"))),
        rule=Rule("per-digit answer accuracy on 3-digit addition, reversed − plain", "greater", 0.0),
        scale_note=SCALE,
    ),
]
