"""Sugiharto et al. 2023, "Relative Convolutional Multi-Head Attention for Natural Language Modelling" (RCMHA,
arXiv:2308.03429): depth-wise convolutions on the projections plus a relative position bias give a higher accuracy
than multi-head attention (and than MDHA and RMHA), at a memory cost between them (abstract, §4). The paper reports
accuracy; the loss compared here is this project's measure."""

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
        "Relative convolutional multi-head attention is more accurate than multi-head attention.",
        "abstract, §4",
        direction="less",
        margin=0.0,
    )
]
