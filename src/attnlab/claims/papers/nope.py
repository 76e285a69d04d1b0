"""Haviv et al. 2022, "Transformer Language Models without Positional Encodings Still Learn Positional Information"
(Findings of EMNLP 2022, arXiv:2203.16634): a causal language model with no position encoding is competitive with
ones that have one, because the causal mask lets it infer positions (abstract). The paper's position-aware baselines
are sinusoidal, learned and ALiBi positions (§1), not RoPE; RoPE is the position-aware baseline here because the
other claims' language-modelling runs use it."""

from attnlab.claims.base import Arm, Claim, Paper, SweepExperiment
from attnlab.claims.sweeps import lm_sweep
from attnlab.claims.verdict import Rule

PAPER = Paper(
    "Transformer Language Models without Positional Encodings Still Learn Positional Information",
    "Haviv et al.",
    2022,
    "2203.16634",
)
SWEEP = lm_sweep("claims-nope", [{"normaliser": "softmax"}], positions=("rope", "nope"), length=64, extrapolate=(4.0,))
CLAIMS = [
    Claim(
        name="nope-competitive-with-rope",
        paper=PAPER,
        statement="A causal language model without position encoding is competitive with ones that encode positions.",
        where="abstract, §1; §3, Table 1",
        experiment=SweepExperiment(SWEEP, "loss", Arm("softmax", "lm", "nope"), Arm("softmax", "lm", "rope")),
        rule=Rule("held-out loss at the training length (64 bytes), NoPE − RoPE, nats/token", "within", 0.05),
        scale_note="2 layers of width 64, 600 steps at 64 bytes; the paper's models are 125M–1.3B parameters.",
    )
]
