"""Zhang et al. 2023, "H2O: Heavy-Hitter Oracle for Efficient Generative Inference of Large Language Models"
(NeurIPS 2023, arXiv:2306.14048).

Keeping the tokens with the largest accumulated attention (heavy hitters) together with the recent ones lets a model
keep its quality with a fraction of the KV cache (abstract, §5). Tested on the shared KV-cache measurement
(``_kv``: SmolLM2-135M, 4096-token prompt, kvpress's protocol): with a quarter of the cache (r = 0.75), the log
perplexity of H2O minus that of the full cache, and H2O against the recent window alone. About 6 minutes on 2 cores
(the shared measurement, once for every KV-cache claim).
"""

from __future__ import annotations

from attnlab.claims.base import Paper
from attnlab.claims.papers._kv import kv_claim, log_ppl_gap
from attnlab.claims.verdict import Rule

PAPER = Paper(
    "H2O: Heavy-Hitter Oracle for Efficient Generative Inference of Large Language Models",
    "Zhang et al.",
    2023,
    "2306.14048",
    "https://github.com/FMInference/H2O",
)

CLAIMS = [
    kv_claim(
        "h2o-keeps-perplexity-at-quarter-cache",
        PAPER,
        "Heavy hitters plus recent tokens keep a model's perplexity within 5% of the full cache with a quarter of "
        "the cache.",
        "abstract, §5",
        Rule("log perplexity, H2O at r = 0.75 − full cache (SmolLM2-135M, 4096 tokens)", "less", 0.05),
        "ppl",
        ("h2o",),
        lambda m: log_ppl_gap(m, "h2o", "full", 0.75),
    ),
    kv_claim(
        "h2o-beats-recent-window",
        PAPER,
        "At the same cache budget, H2O has a much lower perplexity than keeping only the most recent tokens.",
        "§5",
        Rule("log perplexity, recent window − H2O at r = 0.5 (SmolLM2-135M, 4096 tokens)", "greater", 0.1),
        "ppl",
        ("h2o", "recent"),
        lambda m: log_ppl_gap(m, "recent", "h2o", 0.5),
    ),
]
