"""Katharopoulos et al. 2020, "Transformers are RNNs: Fast Autoregressive Transformers with Linear Attention"
(ICML 2020, arXiv:2006.16236; code idiap/fast-transformers).

Replacing softmax by the kernel φ(q)·φ(k) with φ = elu + 1 makes attention linear in the length and, the authors
report, keeps performance similar to softmax attention (abstract, §4). Tested on byte-level language modelling
(``_lm.against_softmax``: 2 layers of width 64, 600 steps, three seeds, softmax runs shared with every such claim):
held-out loss of elu+1 linear attention − softmax, within ±0.05 nats/token. About 4 minutes on 2 cores (three
linear-attention runs with the learning-rate search).
"""

from __future__ import annotations

from attnlab.claims.base import Paper
from attnlab.claims.papers._lm import against_softmax

PAPER = Paper(
    "Transformers are RNNs: Fast Autoregressive Transformers with Linear Attention",
    "Katharopoulos et al.",
    2020,
    "2006.16236",
    "https://github.com/idiap/fast-transformers",
)

CLAIMS = [
    against_softmax(
        "linear-attention-matches-softmax-lm",
        PAPER,
        {"normaliser": "linear_elu"},
        "Linear attention with the elu+1 feature map matches softmax attention's language-modelling loss.",
        "abstract, §4",
    ),
]
