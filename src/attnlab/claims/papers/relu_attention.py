"""Wortsman et al. 2023, "Replacing softmax with ReLU in Vision Transformers" (arXiv:2309.08586): ReLU attention
divided by the sequence length approaches or matches softmax attention's scaling with compute in vision
transformers trained on ImageNet-21k (abstract, Figure 1). Tested on language modelling rather than images."""

from attnlab.claims.base import Paper
from attnlab.claims.papers._lm import SCALE, against_softmax

PAPER = Paper("Replacing softmax with ReLU in Vision Transformers", "Wortsman et al.", 2023, "2309.08586")
CLAIMS = [
    against_softmax(
        "relu-attention-matches-softmax",
        PAPER,
        {"normaliser": "relu"},
        "In vision transformers, ReLU attention divided by the sequence length approaches or matches softmax "
        "attention.",
        "abstract, §3, Figure 1",
        scale_note=SCALE + " The paper's evidence is ViTs on ImageNet-21k; this is a different modality.",
    )
]
