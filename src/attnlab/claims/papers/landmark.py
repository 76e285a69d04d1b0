"""Mohtashami & Jaggi 2023, "Landmark Attention: Random-Access Infinite Context Length for Transformers"
(NeurIPS 2023, arXiv:2305.16300; code epfml/landmark-attention).

A landmark token per block lets attention retrieve whole blocks, so a model can use contexts longer than those it
was trained on; the paper shows it on passkey retrieval beyond the training length (abstract, §4.2). Tested with
the ``longctx-passkey`` preset's landmark part (``_passkey``: passkey at T = 64 with a landmark token after every 8
tokens, the ``landmarks`` task, 800 steps) with three seeds: accuracy at 2× the training length, landmark attention
(block 8) − softmax on the same stream. About 16 minutes on 2 cores (six 800-step runs).
"""

from __future__ import annotations

from attnlab.attention.config import AttentionConfig
from attnlab.claims.base import Arm, Claim, Paper, SweepExperiment
from attnlab.claims.papers._passkey import preset_part
from attnlab.claims.verdict import Rule

PAPER = Paper(
    "Landmark Attention: Random-Access Infinite Context Length for Transformers",
    "Mohtashami & Jaggi",
    2023,
    "2305.16300",
    "https://github.com/epfml/landmark-attention",
)
LANDMARK = {"normaliser": "softmax", "heads": "landmark", "heads_args": {"block": 8}}
SWEEP = preset_part("passkey-landmarks", "claims-landmark")

CLAIMS = [
    Claim(
        name="landmark-retrieves-beyond-training-length",
        paper=PAPER,
        statement="With landmark tokens, a model retrieves the passkey beyond its training length better than "
        "softmax attention on the same stream.",
        where="abstract, §4.2",
        experiment=SweepExperiment(
            SWEEP,
            "accuracy@2x",
            Arm(AttentionConfig.model_validate(LANDMARK).label, "landmarks"),
            Arm("softmax", "landmarks"),
        ),
        rule=Rule("passkey accuracy at 2× the training length (128 tokens), landmark − softmax", "greater", 0.0),
        scale_note="2 layers of width 64 trained from scratch for 800 steps at 64 tokens; the preset's one seed "
        "reached 0.298 at 1× with blocks of 8 (README), so the budget may be too short for landmark attention to "
        "learn retrieval at all. The paper trains at 512 tokens and fine-tunes Llama 7B to 32k.",
    ),
]
