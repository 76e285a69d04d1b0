"""Cai et al. 2024, "PyramidKV: Dynamic KV Cache Compression based on Pyramidal Information Funneling"
(arXiv:2406.02069).

Attention funnels from broad in the lower layers to a few tokens in the upper ones, so budgets that shrink with
depth (at the same total) beat one budget for every layer, most of all at small budgets (abstract, §4–5). Tested
on the shared KV-cache measurement (``_kv``: SmolLM2-135M, 4096-token prompt, kvpress's protocol) with a quarter of
the cache: PyramidKV against SnapKV, which keeps keys by the same rule with equal budgets per layer. About 6 minutes
on 2 cores (the shared measurement, once for every KV-cache claim).
"""

from __future__ import annotations

from attnlab.claims.base import Paper
from attnlab.claims.papers._kv import kv_claim, log_ppl_gap
from attnlab.claims.verdict import Rule

PAPER = Paper(
    "PyramidKV: Dynamic KV Cache Compression based on Pyramidal Information Funneling",
    "Cai et al.",
    2024,
    "2406.02069",
    "https://github.com/Zefan-Cai/KVCache-Factory",
)

CLAIMS = [
    kv_claim(
        "pyramidkv-beats-uniform-budgets",
        PAPER,
        "Budgets that shrink with depth give a lower perplexity than the same total budget split equally over the "
        "layers (SnapKV's).",
        "abstract, §5",
        Rule("log perplexity, SnapKV − PyramidKV at r = 0.75 (SmolLM2-135M, 4096 tokens)", "greater", 0.0),
        "ppl",
        ("pyramidkv", "snapkv"),
        lambda m: log_ppl_gap(m, "snapkv", "pyramidkv", 0.75),
    ),
]
