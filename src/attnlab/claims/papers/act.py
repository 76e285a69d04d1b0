"""Yu et al. 2024, "Unveiling and Harnessing Hidden Attention Sinks: Enhancing Large Language Models without
Training through Attention Calibration" (ACT, ICML 2024, arXiv:2406.15765; code GATECH-EIC/ACT).

Some heads put much attention on tokens other than the first that carry little meaning (hidden sinks); moving part
of it back to the other tokens at inference, in heads chosen on a calibration set, improves the model without
training (abstract). Tested with ``attnlab intervene act smollm2``'s defaults (``experiments.act``): candidate
heads with a hidden sink on 2×128 calibration tokens of CPython's documentation, each kept if calibrating it alone
lowers the calibration loss (β = 0.4, τ = 0.1, the authors' values), then the loss on 8×128 held-out tokens with the
kept heads calibrated minus without calibration. One deterministic run.

Time: the head search runs one forward pass over 2×128 tokens per candidate (182 on SmolLM2-135M, README), plus
six measured passes: a few hundred short passes of the 135M model, about 5 minutes on 2 cores.
"""

from __future__ import annotations

import math

from attnlab.claims.base import Claim, FunctionExperiment, Measurement, Paper
from attnlab.claims.verdict import Rule

PAPER = Paper(
    "Unveiling and Harnessing Hidden Attention Sinks: Enhancing Large Language Models without Training through "
    "Attention Calibration",
    "Yu et al.",
    2024,
    "2406.15765",
    "https://github.com/GATECH-EIC/ACT",
)
KEPT = "heads kept by the search"


def act_on_smollm2() -> Measurement:
    """Held-out loss with ACT on the heads its search keeps, minus without calibration (rows: every head set)."""
    from attnlab.experiments.act import act_experiment
    from attnlab.experiments.text import text_chunks
    from attnlab.lens.pretrained.smollm2 import load_smollm2

    model, tok = load_smollm2()
    result = act_experiment(model, text_chunks(tok, 128, 2), text_chunks(tok, 128, 8, from_end=True))
    held = {label: heldout for label, _, _, heldout, _ in result.rows}
    rows: list[dict[str, object]] = [
        {"heads calibrated": label, "count": len(heads), "calib loss": calib, "held-out loss": heldout, "sinks": sinks}
        for label, heads, calib, heldout, sinks in result.rows
    ]
    return Measurement(exact=held.get(KEPT, math.nan) - held["none"], rows=rows)


CLAIMS = [
    Claim(
        name="act-improves-without-training",
        paper=PAPER,
        statement="Calibrating the hidden attention sinks of selected heads at inference improves a model's accuracy, "
        "with no weight update.",
        where="abstract",
        experiment=FunctionExperiment(act_on_smollm2, seeds="none: one deterministic run"),
        rule=Rule("held-out loss, ACT on the searched heads − none, nats/token (SmolLM2-135M)", "less", 0.0),
        scale_note="Next-token loss on CPython's documentation with SmolLM2-135M; the paper measures accuracy on "
        "classification, multiple-choice and QA benchmarks with 7B–13B models.",
    ),
]
