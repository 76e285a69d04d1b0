"""DeepSeek-AI 2024, "DeepSeek-V2: A Strong, Economical, and Efficient Mixture-of-Experts Language Model"
(arXiv:2405.04434): multi-head latent attention caches a small latent instead of keys and values and performs
at least as well as multi-head attention (§2.1, Appendix D.2, Table 9)."""

from attnlab.claims.base import Paper
from attnlab.claims.papers._lm import against_softmax

PAPER = Paper(
    "DeepSeek-V2: A Strong, Economical, and Efficient Mixture-of-Experts Language Model",
    "DeepSeek-AI",
    2024,
    "2405.04434",
    "https://github.com/deepseek-ai/DeepSeek-V2",
)
CLAIMS = [
    against_softmax(
        "mla-matches-mha",
        PAPER,
        {"normaliser": "softmax", "heads": "mla", "heads_args": {"kv_rank": 16, "q_rank": 24}},
        "Multi-head latent attention is at least as good as multi-head attention, with a much smaller KV cache.",
        "§2.1, Appendix D.2, Table 9",
        direction="less",  # the paper reports MLA at least as good: "matches" is no worse by more than the margin
    )
]
