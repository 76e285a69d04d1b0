"""Addition in three digit formats, for the claims on how a digit's position is described (a leading underscore:
not a paper module): ``sweeps/arithmetic_formats.py`` with three seeds. 3-digit operands in the plain, reversed and
index-hinted formats (``tasks.arithmetic``), softmax with RoPE, 2 layers of width 64, lr 1e-3, 1500 steps of 64,
evaluated at the training length and at 2× (6-digit operands); per-digit accuracy of the answer.

Time: nine runs of 1500 steps over sequences of 12–22 tokens (about half the tokens of the demo's MQAR step, which
costs 24–36 ms of one core, README), about a minute each: about 5 minutes on 2 cores.
"""

from __future__ import annotations

from typing import Any

from attnlab.claims.papers._paired import Pick
from attnlab.runner.config import Sweep
from attnlab.tasks.addition import AdditionConfig
from attnlab.train.config import TrainConfig

FORMATS = ("plain", "reversed", "index_hints")
SWEEP = Sweep(
    name="claims-arithmetic-formats",
    tasks=[AdditionConfig(digits=3, format=fmt) for fmt in FORMATS],
    mechanisms=[{"normaliser": "softmax"}],
    positions=["rope"],
    widths=[64],
    lrs=[1e-3],
    seeds=[0, 1, 2],
    model={"n_layers": 2, "n_heads": 4},
    train=TrainConfig(steps=1500, batch_size=64, eval_every=250, eval_examples=512, extrapolate=[2.0]),
)
SCALE = (
    "A 2-layer model of width 64 trained from scratch for 1500 steps on 3-digit addition, evaluated at 6 digits; the "
    "papers train larger models (GPT-2-small-sized, or 25M parameters) for far longer on up to 20–40 digits."
)


def fmt(name: str) -> tuple[str, Pick]:
    """An arm of the paired comparison: the runs of one format."""

    def pick(config: dict[str, Any]) -> bool:
        return config.get("task", {}).get("format") == name

    return name, pick
