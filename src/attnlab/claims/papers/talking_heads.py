"""Shazeer et al. 2020, "Talking-Heads Attention" (arXiv:2003.02436): mixing the attention logits and weights
across heads gives better perplexity on masked language modelling than multi-head attention, and better transfer to
comprehension and question answering (abstract; §4, Table 1). Tested on causal byte-level language modelling."""

from attnlab.claims.base import Paper
from attnlab.claims.papers._lm import against_softmax

PAPER = Paper("Talking-Heads Attention", "Shazeer et al.", 2020, "2003.02436")
CLAIMS = [
    against_softmax(
        "talking-heads-beat-mha",
        PAPER,
        {"normaliser": "softmax", "heads": "talking_heads"},
        "Talking-heads attention reaches a lower (masked) language-modelling loss than multi-head attention.",
        "abstract; §4, Table 1",
        direction="less",
        margin=0.0,
    )
]
