"""Lv et al. 2024, "Scalable Efficient Training of Large Language Models with Low-dimensional Projected Attention"
(LPA, arXiv:2411.02063).

LPA factors the attention projections through a low dimension r and reports language models at least as good as
full-rank ones (about 5% lower test perplexity, up to 12.4% less training time) with fewer parameters, at 130M, 370M
and 3B parameters (abstract, §4). Tested at r = 16 (width 64) on byte-level language modelling.
"""

from __future__ import annotations

from attnlab.attention.config import AttentionConfig
from attnlab.claims.base import Arm, Claim, Paper, SweepExperiment
from attnlab.claims.sweeps import lm_sweep
from attnlab.claims.verdict import Rule

PAPER = Paper(
    "Scalable Efficient Training of Large Language Models with Low-dimensional Projected Attention",
    "Lv et al.",
    2024,
    "2411.02063",
    "https://github.com/TsinghuaC3I/LPA",
)
LPA = {"normaliser": "softmax", "heads": "lpa", "heads_args": {"rank": 16}}
SWEEP = lm_sweep("claims-lpa", [{"normaliser": "softmax"}, LPA])

CLAIMS = [
    Claim(
        name="lpa-matches-full-rank",
        paper=PAPER,
        statement="Attention with low-dimensional projections matches or beats full-rank projections, with fewer "
        "parameters.",
        where="abstract, §4 (Table 1)",
        experiment=SweepExperiment(
            SWEEP, "loss", Arm(AttentionConfig.model_validate(LPA).label, "lm"), Arm("softmax", "lm")
        ),
        # "matches": no worse by more than 0.05 (the paper reports better)
        rule=Rule("held-out loss, LPA − full rank, nats/token", "less", 0.05),
        scale_note="Width 64 with r = 16, 600 steps; the paper trains 130M–3B models, where the projections are a "
        "larger share of the parameters.",
    ),
]
