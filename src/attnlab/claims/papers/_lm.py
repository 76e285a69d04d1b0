"""Claims that compare a mechanism with softmax multi-head attention on byte-level language modelling (a leading
underscore: not a paper module). Every such claim runs ``claims.sweeps.lm_sweep`` with its mechanism and softmax,
so the softmax runs are trained once and shared by all of them (runs are found by id)."""

from __future__ import annotations

from typing import Any

from attnlab.attention.config import AttentionConfig
from attnlab.claims.base import Arm, Claim, Paper, SweepExperiment
from attnlab.claims.sweeps import lm_sweep
from attnlab.claims.verdict import Direction, Rule

SOFTMAX = {"normaliser": "softmax"}
SCALE = "2 layers of width 64, 600 steps of byte-level language modelling at T = 128 on 2 CPU cores."


def against_softmax(
    name: str,
    paper: Paper,
    mechanism: dict[str, Any],
    statement: str,
    where: str,
    *,
    direction: Direction = "within",
    margin: float = 0.05,
    scale_note: str = SCALE,
) -> Claim:
    """A claim on the held-out loss of ``mechanism`` − softmax's: ``within`` ± margin ("matches"), or ``less`` than
    the margin ("beats")."""
    label = AttentionConfig.model_validate(mechanism).label
    sweep = lm_sweep(f"claims-{name}", [SOFTMAX, mechanism])
    return Claim(
        name=name,
        paper=paper,
        statement=statement,
        where=where,
        experiment=SweepExperiment(sweep, "loss", Arm(label, "lm"), Arm("softmax", "lm")),
        rule=Rule(f"held-out loss, {label} − softmax, nats/token", direction, margin),
        scale_note=scale_note,
    )
