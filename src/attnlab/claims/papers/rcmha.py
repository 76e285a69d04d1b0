"""Sugiharto et al. 2023, "Relative Convolutional Multi-Head Attention for Natural Language Modelling" (RCMHA,
arXiv:2308.03429): depth-wise convolutions on the projections plus a relative position bias improve language
modelling over multi-head attention (abstract, §4)."""

from attnlab.claims.base import Paper
from attnlab.claims.papers._lm import against_softmax

PAPER = Paper(
    "Relative Convolutional Multi-Head Attention for Natural Language Modelling", "Sugiharto et al.", 2023, "2308.03429"
)
CLAIMS = [
    against_softmax(
        "rcmha-beats-mha",
        PAPER,
        {"normaliser": "softmax", "heads": "rcmha", "heads_args": {"max_distance": 16}},
        "Relative convolutional multi-head attention reaches a lower loss than multi-head attention.",
        "abstract, §4",
        direction="less",
        margin=0.0,
    )
]
