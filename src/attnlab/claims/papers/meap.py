"""Zhuang et al. 2025, "Mask-Enhanced Autoregressive Prediction: Pay Less Attention to Learn More" (MEAP,
arXiv:2502.07490).

Masking a small fraction of the input tokens during next-token training, at no extra cost, improves retrieval of
key information (needle in a haystack) over plain next-token training (abstract; §4.1.2, needle-in-a-haystack
retrieval after pre-training). Tested on the
``longctx-passkey`` preset's passkey part (``_passkey``: softmax, T = 64, 800 steps) with and without 15% of each
training batch's inputs masked (``TrainConfig.meap_mask_fraction``; evaluation never masked), three seeds: passkey
accuracy, MEAP − plain, paired by seed. About 8 minutes on 2 cores for the three MEAP runs (the plain runs are the
CCA claim's softmax runs; about 16 minutes when run alone).
"""

from __future__ import annotations

from attnlab.claims.base import Claim, Paper, SweepExperiment
from attnlab.claims.papers._paired import paired
from attnlab.claims.papers._passkey import preset_part
from attnlab.claims.verdict import Rule
from attnlab.runner.suite import Suite

PAPER = Paper(
    "Mask-Enhanced Autoregressive Prediction: Pay Less Attention to Learn More",
    "Zhuang et al.",
    2025,
    "2502.07490",
    "https://github.com/scitix/MEAP",
)
FRACTION = 0.15
PLAIN = preset_part("passkey", "claims-meap-plain", mechanisms=[{"normaliser": "softmax"}])
MASKED = preset_part(
    "passkey",
    "claims-meap-masked",
    mechanisms=[{"normaliser": "softmax"}],
    train=PLAIN.train.model_copy(update={"meap_mask_fraction": FRACTION}),
)
SUITE = Suite(name="claims-meap", parts=[PLAIN, MASKED])


def _fraction(config: dict) -> float:
    return float(config.get("train", {}).get("meap_mask_fraction", 0.0))


CLAIMS = [
    Claim(
        name="meap-improves-retrieval",
        paper=PAPER,
        statement="Masking a fraction of the input tokens during next-token training improves key-information "
        "retrieval.",
        where="abstract, §4.1.2",
        experiment=SweepExperiment(
            SUITE,
            derive=paired(
                "accuracy",
                ("MEAP (15% masked)", lambda c: _fraction(c) == FRACTION),
                ("plain", lambda c: _fraction(c) == 0.0),
            ),
        ),
        rule=Rule("passkey accuracy at T = 64, MEAP − plain (softmax, 800 steps)", "greater", 0.0),
        scale_note="2 layers of width 64 trained from scratch on passkey at 64 tokens; the paper pre-trains 1.1B "
        "models on 200B tokens and fine-tunes Llama 3 8B, and measures needle-in-a-haystack at up to 32k tokens.",
    ),
]
