"""Lee et al. 2024, "A Training-free Sub-quadratic Cost Transformer Model Serving Framework With Hierarchically
Pruned Attention" (HiP, arXiv:2406.09827).

HiP finds each query's top keys by a hierarchical, tree-like pruning of key blocks, with no training, and keeps the
pretrained model's quality at sub-quadratic cost (abstract). Tested with the shared sparse-prefill measurement
(``_prefill``: SmolLM2-135M, 4096 tokens, 1024 keys per query): the perplexity of HiP's top-k pattern against dense.
About 8 minutes on 2 cores (the shared measurement, once for the MInference and HiP claims).
"""

from __future__ import annotations

from attnlab.claims.base import Paper
from attnlab.claims.papers._prefill import column, prefill_claim
from attnlab.claims.verdict import Rule

PAPER = Paper(
    "A Training-free Sub-quadratic Cost Transformer Model Serving Framework With Hierarchically Pruned Attention",
    "Lee et al.",
    2024,
    "2406.09827",
    "https://github.com/DeepAuto-AI/hip-attention",
)

CLAIMS = [
    prefill_claim(
        "hip-keeps-perplexity",
        PAPER,
        "Prefilling with HiP's hierarchically pruned top-k attention, without training, keeps perplexity within 2% "
        "of dense attention.",
        "abstract",
        Rule("perplexity with HiP / dense − 1, 4096 tokens, 1024 keys (SmolLM2-135M)", "less", 0.02),
        lambda m: column(m, "hip", "ppl / dense") - 1.0,
    ),
]
