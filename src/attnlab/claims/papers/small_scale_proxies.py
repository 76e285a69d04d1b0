"""Wortsman et al. 2023, "Small-scale proxies for large-scale Transformer training instabilities"
(arXiv:2309.14322).

At high learning rates the attention logits grow and training degrades; qk-layernorm removes that instability, so
a model with it loses less over a range of learning rates: a lower learning-rate sensitivity (§2.2, §3.1.1,
Figure 1). Tested with the ``lr-sensitivity`` preset's plain part at width 64 (``sweeps/lr_sensitivity.py``:
byte-level language modelling at T = 64, 2 layers, 300 steps, seven learning rates from 1e-4 to 1e-1) with three
seeds: per seed, the sensitivity E_η[min(ℓ(η), ℓ₀) − ℓ*] (``experiments.lr_sensitivity``) of softmax minus that of
softmax with qk-layernorm; a learning rate whose run did not finish counts as ℓ₀ = ln V. The preset's one seed
printed 0.490 and 0.387 at this width (docs/results/lr-sensitivity/sensitivity.txt).

Time: 42 runs; the preset's width-64 runs took a median of 15.8 s each (its database's wall times), so about 11
minutes of one core, about 6 minutes on 2 cores.
"""

from __future__ import annotations

import math

from attnlab.claims.base import Claim, Curves, Measurement, Paper, Rows, SweepExperiment
from attnlab.claims.papers._paired import config_of
from attnlab.claims.verdict import Rule
from attnlab.experiments.lr_sensitivity import lr_sensitivity, variant_of
from attnlab.runner.config import Sweep
from attnlab.sweeps.lr_sensitivity import SWEEP as PRESET

PAPER = Paper(
    "Small-scale proxies for large-scale Transformer training instabilities",
    "Wortsman et al.",
    2023,
    "2309.14322",
)
PLAIN = next(p for p in PRESET.parts if p.name == "plain")
SWEEP = Sweep.model_validate(
    {**PLAIN.model_dump(), "name": "claims-qk-norm-sensitivity", "widths": [64], "seeds": [0, 1, 2]}
)


def sensitivity_gap(rows: Rows, curves: Curves) -> Measurement:
    """Per seed: the learning-rate sensitivity of plain softmax − that of softmax with qk-layernorm."""
    grid = sorted(SWEEP.lrs)
    per: dict[tuple[str, int], float] = {}
    for variant in ("plain", "qk-norm"):
        for seed in SWEEP.seeds:
            mine = [r for r in rows if variant_of(r) == variant and r["seed"] == seed]
            if not mine:
                continue
            vocab = config_of(mine[0])["model"]["vocab_size"]
            loss = {r["lr"]: float(r["final"].get("loss", math.nan)) for r in mine}
            per[variant, seed] = lr_sensitivity([loss.get(lr, math.nan) for lr in grid], math.log(vocab))
    seeds = [s for s in SWEEP.seeds if ("plain", s) in per and ("qk-norm", s) in per]
    table: list[dict[str, object]] = [
        {"seed": s, "plain": per["plain", s], "qk-norm": per["qk-norm", s]} for s in seeds
    ]
    series = {v: [(float(s), per[v, s]) for s in seeds] for v in ("plain", "qk-norm")}
    values = {s: per["plain", s] - per["qk-norm", s] for s in seeds}
    return Measurement(values=values, rows=table, series=series, xlabel="seed", ylabel="learning-rate sensitivity")


CLAIMS = [
    Claim(
        name="qk-norm-lowers-lr-sensitivity",
        paper=PAPER,
        statement="qk-layernorm lowers a model's learning-rate sensitivity: it loses less loss over a range of "
        "learning rates.",
        where="§2.2, §3.1.1, Figure 1",
        experiment=SweepExperiment(SWEEP, derive=sensitivity_gap),
        rule=Rule(
            "learning-rate sensitivity over 1e-4 … 1e-1, plain softmax − with qk-layernorm, nats/token", "greater", 0.0
        ),
        scale_note="2 layers of width 64, 300 steps of byte-level language modelling; the paper trains models "
        "from 9M to 1.2B parameters on C4 and reads the trend with width.",
    ),
]
