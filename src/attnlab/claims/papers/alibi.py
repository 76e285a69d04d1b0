"""Press et al. 2022, "Train Short, Test Long: Attention with Linear Biases Enables Input Length Extrapolation"
(ALiBi, ICLR 2022, arXiv:2108.12409): a model trained with ALiBi keeps its perplexity on sequences longer than it
was trained on, where sinusoidal, rotary and T5 positions do not (Figure 1; exact perplexities in the appendix
Tables 2–3). Tested by training byte-level language
models at length 64 and evaluating the held-out loss at 4× that length."""

from attnlab.claims.base import Arm, Claim, Paper, SweepExperiment
from attnlab.claims.sweeps import lm_sweep
from attnlab.claims.verdict import Rule

PAPER = Paper(
    "Train Short, Test Long: Attention with Linear Biases Enables Input Length Extrapolation",
    "Press et al.",
    2022,
    "2108.12409",
    "https://github.com/ofirpress/attention_with_linear_biases",
)
SWEEP = lm_sweep(
    "claims-alibi", [{"normaliser": "softmax"}], positions=("rope", "alibi"), length=64, extrapolate=(4.0,)
)
CLAIMS = [
    Claim(
        name="alibi-extrapolates-better-than-rope",
        paper=PAPER,
        statement="At 4× the training length, a model with ALiBi has a lower loss than the same model with RoPE.",
        where="Figure 1 (appendix Tables 2–3)",
        experiment=SweepExperiment(SWEEP, "loss@4x", Arm("softmax", "lm", "alibi"), Arm("softmax", "lm", "rope")),
        rule=Rule("held-out loss at 4× the training length (256 bytes), ALiBi − RoPE, nats/token", "less", 0.0),
        scale_note="2 layers of width 64 trained at 64 bytes for 600 steps; the paper trains 247M–1.3B models on "
        "WikiText-103 and CC100+RoBERTa at 512–1024 tokens.",
    )
]
