"""Xu, Goyal, Choi 2024, "Recycled Attention: Efficient Inference for Long-Context Language Models"
(arXiv:2411.05787).

Between full-attention steps, attend only to the keys the last full step attended to most (plus newer tokens):
with the cost of a local-context method it keeps what a local window loses (abstract). Tested on the shared
KV-cache measurement (``_kv``: SmolLM2-135M, 4096-token prompt, kvpress's protocol, stride 8) with a quarter of the
prompt attended: passkey retrieval against StreamingLLM at the same budget. About 6 minutes on 2 cores (the shared
measurement, once for every KV-cache claim).
"""

from __future__ import annotations

from attnlab.claims.base import Paper
from attnlab.claims.papers._kv import kv_claim, passkey_gap
from attnlab.claims.verdict import Rule

PAPER = Paper(
    "Recycled Attention: Efficient Inference for Long-Context Language Models",
    "Xu, Goyal, Choi",
    2024,
    "2411.05787",
    "https://github.com/carriex/recycled-attention",
)

CLAIMS = [
    kv_claim(
        "recycled-attention-beats-streaming-retrieval",
        PAPER,
        "Attending to the recycled top keys retrieves more than a local window with sinks (StreamingLLM) at the "
        "same budget.",
        "abstract",
        Rule("passkey exact match over 5 depths, Recycled − StreamingLLM at r = 0.75", "greater", 0.0),
        "passkey",
        ("recycled", "streaming"),
        lambda m: passkey_gap(m, "recycled", "streaming", 0.75),
    ),
]
