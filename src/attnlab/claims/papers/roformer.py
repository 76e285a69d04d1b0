"""Su et al. 2021, "RoFormer: Enhanced Transformer with Rotary Position Embedding" (arXiv:2104.09864; code
ZhuiyiTechnology/roformer).

Rotating queries and keys by their positions makes attention depend on relative position, and a language model
with it trains to a lower loss than one with learned absolute positions (BERT's) at equal steps (§4; the abstract
reports long-text classification only).
Tested on byte-level language modelling (``claims.sweeps.lm_sweep``, T = 128, whose RoPE runs every claim against
softmax shares): held-out loss, RoPE − a learned absolute position table. About 4 minutes on 2 cores (three runs
with learned positions; the RoPE runs are shared).
"""

from __future__ import annotations

from attnlab.claims.base import Arm, Claim, Paper, SweepExperiment
from attnlab.claims.sweeps import lm_sweep
from attnlab.claims.verdict import Rule

PAPER = Paper(
    "RoFormer: Enhanced Transformer with Rotary Position Embedding",
    "Su et al.",
    2021,
    "2104.09864",
    "https://github.com/ZhuiyiTechnology/roformer",
)
SWEEP = lm_sweep("claims-roformer", [{"normaliser": "softmax"}], positions=("rope", "learned"))

CLAIMS = [
    Claim(
        name="rope-beats-learned-positions",
        paper=PAPER,
        statement="A language model with rotary position embeddings reaches a lower loss than one with learned "
        "absolute positions at equal steps.",
        where="§4",
        experiment=SweepExperiment(SWEEP, "loss", Arm("softmax", "lm", "rope"), Arm("softmax", "lm", "learned")),
        rule=Rule("held-out loss, RoPE − learned absolute positions, nats/token", "less", 0.0),
        scale_note="2 layers of width 64, 600 steps of byte-level language modelling at 128 bytes; the paper "
        "pre-trains BERT-sized models on Chinese and English corpora.",
    )
]
