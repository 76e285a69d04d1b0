"""Ainslie et al. 2023, "GQA: Training Generalized Multi-Query Transformer Models from Multi-Head Checkpoints"
(arXiv:2305.13245): grouped-query attention reaches quality close to multi-head attention with fewer key/value
heads (abstract, §4, Table 1). Tested trained from scratch with 2 key/value heads for 4 query heads."""

from attnlab.claims.base import Paper
from attnlab.claims.papers._lm import against_softmax

PAPER = Paper(
    "GQA: Training Generalized Multi-Query Transformer Models from Multi-Head Checkpoints",
    "Ainslie et al.",
    2023,
    "2305.13245",
)
CLAIMS = [
    against_softmax(
        "gqa-matches-mha",
        PAPER,
        {"normaliser": "softmax", "heads": "gqa", "heads_args": {"n_kv_heads": 2}},
        "Grouped-query attention with half the key/value heads matches multi-head attention's quality.",
        "abstract, §4, Table 1",
    )
]
