"""Oren et al. 2024, "Transformers are Multi-State RNNs" (EMNLP 2024, arXiv:2401.06104).

TOVA keeps the tokens the newest query attends to most (averaged over the layer's heads) and reports that it
outperforms the other eviction policies at the same cache size, near the full cache with a fraction of it
(abstract, §4–5). Tested on the shared KV-cache measurement (``_kv``: SmolLM2-135M, 4096-token prompt, kvpress's
protocol) with a quarter of the cache: perplexity against H2O, and passkey retrieval against the recent window.
About 6 minutes on 2 cores (the shared measurement, once for every KV-cache claim).
"""

from __future__ import annotations

from attnlab.claims.base import Paper
from attnlab.claims.papers._kv import kv_claim, log_ppl_gap, passkey_gap
from attnlab.claims.verdict import Rule

PAPER = Paper(
    "Transformers are Multi-State RNNs", "Oren et al.", 2024, "2401.06104", "https://github.com/schwartz-lab-NLP/TOVA"
)

CLAIMS = [
    kv_claim(
        "tova-beats-h2o-perplexity",
        PAPER,
        "At the same cache budget, TOVA has a lower perplexity than H2O.",
        "abstract, §5",
        Rule("log perplexity, H2O − TOVA at r = 0.75 (SmolLM2-135M, 4096 tokens)", "greater", 0.0),
        "ppl",
        ("tova", "h2o"),
        lambda m: log_ppl_gap(m, "h2o", "tova", 0.75),
    ),
    kv_claim(
        "tova-retrieves-beyond-the-window",
        PAPER,
        "At the same cache budget, TOVA retrieves information that a recent window of that size has evicted.",
        "abstract, §5",
        Rule("passkey exact match over 5 depths, TOVA − recent window at r = 0.75", "greater", 0.0),
        "passkey",
        ("tova", "recent"),
        lambda m: passkey_gap(m, "tova", "recent", 0.75),
    ),
]
