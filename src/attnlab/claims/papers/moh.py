"""Jin et al. 2024, "MoH: Multi-Head Attention as Mixture-of-Head Attention" (arXiv:2410.11842).

MoH routes each token to a subset of the heads (some shared heads always on, the rest chosen by a router) and
reports that with 50–90% of the heads active it matches or beats multi-head attention (abstract, §4). Tested at 3
of 4 heads per token (1 shared, top-2 of the other 3) on byte-level language modelling.
"""

from __future__ import annotations

from attnlab.attention.config import AttentionConfig
from attnlab.claims.base import Arm, Claim, Paper, SweepExperiment
from attnlab.claims.sweeps import lm_sweep
from attnlab.claims.verdict import Rule

PAPER = Paper(
    "MoH: Multi-Head Attention as Mixture-of-Head Attention",
    "Jin et al.",
    2024,
    "2410.11842",
    "https://github.com/SkyworkAI/MoH",
)
MOH = {"normaliser": "softmax", "heads": "moh", "heads_args": {"n_shared": 1, "top_k": 2}}
SWEEP = lm_sweep("claims-moh", [{"normaliser": "softmax"}, MOH])

CLAIMS = [
    Claim(
        name="moh-matches-mha",
        paper=PAPER,
        statement="Mixture-of-head attention with 75% of the heads active per token matches multi-head attention.",
        where="abstract, §4 (Tables 2–4)",
        experiment=SweepExperiment(
            SWEEP, "loss", Arm(AttentionConfig.model_validate(MOH).label, "lm"), Arm("softmax", "lm")
        ),
        # "matches": no worse by more than 0.05 (the paper reports better)
        rule=Rule("held-out loss, MoH − MHA, nats/token", "less", 0.05),
        scale_note="4 heads of width 16 (so 75% is 3 heads), 600 steps; the paper routes 12–32 heads in ViTs, DiTs "
        "and LLMs trained on billions of tokens.",
    ),
]
