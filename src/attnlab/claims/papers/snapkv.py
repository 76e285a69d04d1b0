"""Li et al. 2024, "SnapKV: LLM Knows What You are Looking for Before Generation" (NeurIPS 2024, arXiv:2404.14469).

The attention of the prompt's last queries (the observation window) tells which keys the generation will need;
keeping only those compresses the prompt's KV cache with comparable quality, retrieval included (abstract, §5,
Needle-in-a-Haystack). Tested on the shared KV-cache measurement (``_kv``: SmolLM2-135M, 4096-token prompt,
kvpress's protocol) at half the cache: perplexity, and passkey exact match against the full cache. About 6 minutes
on 2 cores (the shared measurement, once for every KV-cache claim).
"""

from __future__ import annotations

from attnlab.claims.base import Paper
from attnlab.claims.papers._kv import kv_claim, log_ppl_gap, passkey_gap
from attnlab.claims.verdict import Rule

PAPER = Paper(
    "SnapKV: LLM Knows What You are Looking for Before Generation",
    "Li et al.",
    2024,
    "2404.14469",
    "https://github.com/FasterDecoding/SnapKV",
)

CLAIMS = [
    kv_claim(
        "snapkv-keeps-perplexity-at-half-cache",
        PAPER,
        "Compressing the prompt's cache to half by the observation window's attention keeps perplexity within 5% "
        "of the full cache.",
        "abstract, §5",
        Rule("log perplexity, SnapKV at r = 0.5 − full cache (SmolLM2-135M, 4096 tokens)", "less", 0.05),
        "ppl",
        ("snapkv",),
        lambda m: log_ppl_gap(m, "snapkv", "full", 0.5),
    ),
    kv_claim(
        "snapkv-keeps-retrieval-at-half-cache",
        PAPER,
        "With half the prompt's cache, SnapKV still retrieves a needle at the full cache's accuracy, to within "
        "one depth in five.",
        "abstract, §5 (Needle-in-a-Haystack)",
        Rule("passkey exact match over 5 depths, full cache − SnapKV at r = 0.5", "less", 0.3),
        "passkey",
        ("snapkv",),
        lambda m: passkey_gap(m, "full", "snapkv", 0.5),
    ),
]
