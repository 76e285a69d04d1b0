"""Tan et al. 2024, "PEAR: Position-Embedding-Agnostic Attention Re-weighting Enhances Retrieval-Augmented
Generation with Zero Inference Overhead" (arXiv:2409.19745; code TTArch/PEAR-RAG).

PEAR learns one coefficient per attention head on a copying proxy task, with the model frozen, and reports better
context use (§3–4). Tested with attnlab's PEAR on SmolLM2-135M (``attnlab intervene pear smollm2``: 40 steps of
batch 4 on repeated random tokens, 32 held-out sequences of another seed): the held-out copying loss after the
re-weighting minus before, one deterministic run.
"""

from __future__ import annotations

from attnlab.claims.base import Claim, FunctionExperiment, Measurement, Paper
from attnlab.claims.verdict import Rule

PAPER = Paper(
    "PEAR: Position-Embedding-Agnostic Attention Re-weighting Enhances Retrieval-Augmented Generation with Zero "
    "Inference Overhead",
    "Tan et al.",
    2024,
    "2409.19745",
    "https://github.com/TTArch/PEAR-RAG",
)


def pear_on_smollm2() -> Measurement:
    """PEAR's held-out copying loss change on SmolLM2 (and the real-text loss, for the report)."""
    from attnlab.experiments.pear import pear_experiment
    from attnlab.experiments.text import text_chunks
    from attnlab.lens.copy_task import CopyTask
    from attnlab.lens.inspect import MODEL_INFO
    from attnlab.lens.pretrained.smollm2 import load_smollm2

    model, tok = load_smollm2()
    info = MODEL_INFO["smollm2"]  # the command's defaults: |x| = 25, four 128-token chunks of real text
    task = CopyTask(n=25, low=info["low"], high=info["high"], bos=info["bos"])
    result = pear_experiment(model, task=task, text_tokens=text_chunks(tok, 128, 4, from_end=True))
    rows: list[dict[str, object]] = [
        {
            "": "before",
            "copy loss": result.before.copy_loss,
            "copy acc": result.before.copy_acc,
            "text loss": result.text_before,
        },
        {
            "": "after",
            "copy loss": result.after.copy_loss,
            "copy acc": result.after.copy_acc,
            "text loss": result.text_after,
        },
    ]
    return Measurement(exact=result.after.copy_loss - result.before.copy_loss, rows=rows)


CLAIMS = [
    Claim(
        name="pear-improves-copying",
        paper=PAPER,
        statement="Re-weighting attention heads on a copying proxy task, with the model frozen, improves copying from "
        "the context.",
        where="§3–4",
        experiment=FunctionExperiment(pear_on_smollm2, seeds="none: one deterministic run (seed 0)"),
        rule=Rule("held-out copying loss after − before, nats/token (SmolLM2-135M)", "less", 0.0),
        scale_note="SmolLM2-135M on the proxy task itself; the paper measures RAG benchmarks on 7B models.",
    ),
]
