"""Sun et al. 2023, "Retentive Network: A Successor to Transformer for Large Language Models" (arXiv:2307.08621):
retention (decayed linear attention) reaches language-modelling quality comparable to Transformers, and better
beyond about 2B parameters (§3.2, the comparison with Transformer; Figure 5)."""

from attnlab.claims.base import Paper
from attnlab.claims.papers._lm import SCALE, against_softmax

PAPER = Paper(
    "Retentive Network: A Successor to Transformer for Large Language Models", "Sun et al.", 2023, "2307.08621"
)
CLAIMS = [
    against_softmax(
        "retnet-matches-transformer",
        PAPER,
        {"normaliser": "retnet"},
        "Retention matches softmax attention's language-modelling quality.",
        "§3.2, Figure 5",
        scale_note=SCALE + " The paper finds RetNet behind Transformers below ~2B parameters and ahead above.",
    )
]
