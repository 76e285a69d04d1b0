"""Raffel et al. 2020, "Exploring the Limits of Transfer Learning with a Unified Text-to-Text Transformer" (T5,
JMLR 2020, arXiv:1910.10683; code google-research/text-to-text-transfer-transformer).

T5 replaces absolute positions with a learned scalar bias per head of the bucketed relative distance, log-spaced
buckets up to 128 beyond which every distance shares one bias (§2.1), so the model can be run on any length; Press et
al. (arXiv:2108.12409, Figure 1 and appendix Tables 2–3) measured that this bias extrapolates better than rotary
positions. Tested by training
byte-level language models at length 64 (the ALiBi claim's setting, whose RoPE runs it shares) and evaluating the
held-out loss at 4× that length. About 4 minutes on 2 cores (three T5 runs of 600 steps with the learning-rate
search; the RoPE runs are shared).
"""

from __future__ import annotations

from attnlab.claims.base import Arm, Claim, Paper, SweepExperiment
from attnlab.claims.sweeps import lm_sweep
from attnlab.claims.verdict import Rule

PAPER = Paper(
    "Exploring the Limits of Transfer Learning with a Unified Text-to-Text Transformer",
    "Raffel et al.",
    2020,
    "1910.10683",
    "https://github.com/google-research/text-to-text-transfer-transformer",
)
SWEEP = lm_sweep("claims-t5", [{"normaliser": "softmax"}], positions=("rope", "t5"), length=64, extrapolate=(4.0,))

CLAIMS = [
    Claim(
        name="t5-bias-extrapolates-better-than-rope",
        paper=PAPER,
        statement="At 4× the training length, a model with T5's bucketed relative bias has a lower loss than the same "
        "model with RoPE.",
        where="§2.1; measured by Press et al. 2022, Figure 1",
        experiment=SweepExperiment(SWEEP, "loss@4x", Arm("softmax", "lm", "t5"), Arm("softmax", "lm", "rope")),
        rule=Rule("held-out loss at 4× the training length (256 bytes), T5 bias − RoPE, nats/token", "less", 0.0),
        scale_note="2 layers of width 64 trained at 64 bytes for 600 steps; T5 is an encoder-decoder trained at 512 "
        "tokens, and Press et al. compare 247M-parameter language models on WikiText-103.",
    )
]
