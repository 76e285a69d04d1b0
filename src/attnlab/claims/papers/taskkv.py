"""He, Liu, Chen 2025, "Task-KV: Task-aware KV Cache Optimization via Semantic Differentiation of Attention Heads"
(arXiv:2501.15113).

Heads whose outputs lie far from the layer's semantic centre (heterogeneous heads) keep their whole cache, the
others a few sinks, recent and middle tokens; this beats uniform compression at the same budget (abstract).
Tested on the shared KV-cache measurement (``_kv``: SmolLM2-135M, 4096-token prompt, kvpress's protocol) at half the
cache: passkey retrieval of Task-KV against SnapKV. Task-KV here follows the abstract only (docs/kv_policies.md
says which choices are attnlab's). About 6 minutes on 2 cores (the shared measurement, once for every KV-cache
claim).
"""

from __future__ import annotations

from attnlab.claims.base import Paper
from attnlab.claims.papers._kv import SCALE, kv_claim, passkey_gap
from attnlab.claims.verdict import Rule

PAPER = Paper(
    "Task-KV: Task-aware KV Cache Optimization via Semantic Differentiation of Attention Heads",
    "He, Liu, Chen",
    2025,
    "2501.15113",
)

CLAIMS = [
    kv_claim(
        "taskkv-beats-uniform-retrieval",
        PAPER,
        "At the same cache budget, giving the heterogeneous heads their whole cache retrieves more than compressing "
        "every head alike (SnapKV).",
        "abstract",
        Rule("passkey exact match over 5 depths, Task-KV − SnapKV at r = 0.5", "greater", 0.0),
        "passkey",
        ("taskkv", "snapkv"),
        lambda m: passkey_gap(m, "taskkv", "snapkv", 0.5),
        scale_note=SCALE + " Task-KV is implemented from the paper's abstract (its method section was not read).",
    ),
]
