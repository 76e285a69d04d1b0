"""Shazeer et al. 2020, "Talking-Heads Attention" (arXiv:2003.02436): mixing the attention logits and weights
across heads improves language-modelling perplexity over multi-head attention (§4, Table 1)."""

from attnlab.claims.base import Paper
from attnlab.claims.papers._lm import against_softmax

PAPER = Paper("Talking-Heads Attention", "Shazeer et al.", 2020, "2003.02436")
CLAIMS = [
    against_softmax(
        "talking-heads-beat-mha",
        PAPER,
        {"normaliser": "softmax", "heads": "talking_heads"},
        "Talking-heads attention reaches a lower language-modelling loss than multi-head attention.",
        "§4, Table 1",
        direction="less",
        margin=0.0,
    )
]
