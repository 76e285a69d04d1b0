"""Hua et al. 2022, "Transformer Quality in Linear Time" (FLASH, arXiv:2202.10447): attention with squared-ReLU
weights (in a gated attention unit) keeps Transformer quality (§2, Table 1 ablations). Tested as the weights alone
(relu2) in a standard block."""

from attnlab.claims.base import Paper
from attnlab.claims.papers._lm import SCALE, against_softmax

PAPER = Paper("Transformer Quality in Linear Time", "Hua et al.", 2022, "2202.10447")
CLAIMS = [
    against_softmax(
        "relu2-attention-matches-softmax",
        PAPER,
        {"normaliser": "relu2"},
        "Squared-ReLU attention weights match softmax attention's quality.",
        "§2, Table 1",
        scale_note=SCALE + " The paper pairs relu² with its gated attention unit; here it replaces softmax alone.",
    )
]
