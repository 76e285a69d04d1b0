"""Ioannides et al. 2024, "Gaussian Adaptive Attention is All You Need: Robust Contextual Representations Across
Multiple Modalities" (GAAM, arXiv:2401.11143): attention with learnable Gaussian means and variances improves on
dot-product attention (abstract, §4). The paper measures classification accuracy (speech emotion, images, text),
not the language-modelling loss that this test compares."""

from attnlab.claims.base import Paper
from attnlab.claims.papers._lm import against_softmax

PAPER = Paper(
    "Gaussian Adaptive Attention is All You Need: Robust Contextual Representations Across Multiple Modalities",
    "Ioannides et al.",
    2024,
    "2401.11143",
)
CLAIMS = [
    against_softmax(
        "gaam-beats-softmax",
        PAPER,
        {"normaliser": "softmax", "heads": "gaam"},
        "Gaussian adaptive attention is more accurate than dot-product attention.",
        "abstract, §4",
        direction="less",
        margin=0.0,
    )
]
