"""Chen et al. 2024, "Core Context Aware Attention for Long Context Language Modeling" (CCA-Attention,
arXiv:2412.12465).

Pooling each group of far tokens into one core token and attending to those with a local window replaces full
self-attention at a lower cost without losing its long-context performance (abstract). Tested with the
``longctx-passkey`` preset's passkey part (``_passkey``: T = 64, 800 steps, groups of 4, window 16) with three
seeds: passkey accuracy at the training length, CCA − softmax. About 16 minutes on 2 cores (six 800-step runs; the
softmax runs are shared with the MEAP claim).
"""

from __future__ import annotations

from attnlab.attention.config import AttentionConfig
from attnlab.claims.base import Arm, Claim, Paper, SweepExperiment
from attnlab.claims.papers._passkey import preset_part
from attnlab.claims.verdict import Rule

PAPER = Paper(
    "Core Context Aware Attention for Long Context Language Modeling",
    "Chen et al.",
    2024,
    "2412.12465",
    "https://github.com/chenyaofo/CCA-Attention",
)
CCA = {"normaliser": "softmax", "heads": "cca", "heads_args": {"group": 4, "window": 16}}
SWEEP = preset_part("passkey", "claims-cca")

CLAIMS = [
    Claim(
        name="cca-matches-full-attention",
        paper=PAPER,
        statement="Core context aware attention matches full self-attention's accuracy at the training length.",
        where="abstract",
        experiment=SweepExperiment(
            SWEEP, "accuracy", Arm(AttentionConfig.model_validate(CCA).label, "passkey"), Arm("softmax", "passkey")
        ),
        rule=Rule("passkey accuracy at T = 64, CCA − softmax", "within", 0.05),
        scale_note="2 layers of width 64 trained from scratch on passkey at 64 tokens, where a group of 4 and a "
        "16-token window already cover much of the context; the paper fine-tunes Llama 2 7B at 32k–128k tokens.",
    ),
]
