"""Jiang et al. 2024, "MInference 1.0: Accelerating Pre-filling for Long-Context LLMs via Dynamic Sparse
Attention" (NeurIPS 2024, arXiv:2407.02490; code microsoft/MInference).

Long-context attention follows a few patterns (A-shape, vertical-slash, block-sparse) whose indices can be estimated
cheaply per input; computing only those blocks speeds up pre-filling while keeping accuracy (abstract, §3–4).
Tested with the shared sparse-prefill measurement (``_prefill``: SmolLM2-135M, 4096 tokens, 1024 keys per query):
the perplexity of the vertical-slash pattern against dense, and its attention time (estimation included) against
dense SDPA. About 8 minutes on 2 cores (the shared measurement, once for the MInference and HiP claims).
"""

from __future__ import annotations

from attnlab.claims.base import Paper
from attnlab.claims.papers._prefill import column, prefill_claim
from attnlab.claims.verdict import Rule

PAPER = Paper(
    "MInference 1.0: Accelerating Pre-filling for Long-Context LLMs via Dynamic Sparse Attention",
    "Jiang et al.",
    2024,
    "2407.02490",
    "https://github.com/microsoft/MInference",
)

CLAIMS = [
    prefill_claim(
        "minference-vertical-slash-keeps-perplexity",
        PAPER,
        "Prefilling with the vertical-slash sparse pattern keeps perplexity within 2% of dense attention.",
        "abstract, §3–4",
        Rule("perplexity with vertical-slash / dense − 1, 4096 tokens, 1024 keys (SmolLM2-135M)", "less", 0.02),
        lambda m: column(m, "vertical-slash", "ppl / dense") - 1.0,
    ),
    prefill_claim(
        "minference-speeds-up-prefill",
        PAPER,
        "The vertical-slash pattern, index estimation included, computes a layer's prefill attention faster than "
        "dense attention.",
        "abstract, §4",
        Rule("speed-up of prefill attention, dense SDPA time / (estimation + kernel), all layers", "greater", 1.0),
        lambda m: column(m, "vertical-slash", "speed-up"),
    ),
]
