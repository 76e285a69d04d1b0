"""Shazeer 2019, "Fast Transformer Decoding: One Write-Head is All You Need" (arXiv:1911.02150): multi-query
attention (one key/value head shared by all query heads) costs only a minor loss in quality (§4, Tables 1–2)."""

from attnlab.claims.base import Paper
from attnlab.claims.papers._lm import against_softmax

PAPER = Paper("Fast Transformer Decoding: One Write-Head is All You Need", "Shazeer", 2019, "1911.02150")
CLAIMS = [
    against_softmax(
        "mqa-minor-degradation",
        PAPER,
        {"normaliser": "softmax", "heads": "mqa"},
        "Multi-query attention loses only a little quality against multi-head attention.",
        "§4, Tables 1–2",
    )
]
