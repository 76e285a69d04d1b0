"""Files a user writes: a sweep file that registers its own normaliser, and the helpers the plugin tests share."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ATTNLAB = str(Path(sys.executable).with_name("attnlab"))

# softmax with +1 in the denominator, registered by the sweep file that uses it (the case of issue 14)
SOFTMAX1_SWEEP = """
import torch
from torch import Tensor

from attnlab.attention.normalisers.base import NORMALISERS, NoParams, NormaliserBase
from attnlab.runner.config import Sweep
from attnlab.train.config import TrainConfig


@NORMALISERS.register("{name}", summary="softmax with +1 in the denominator", params=NoParams)
class Softmax1(NormaliserBase):
    def __init__(self, params=None, site=None):
        super().__init__()

    def forward(self, scores: Tensor, mask: Tensor | None) -> Tensor:
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        m = scores.amax(-1, keepdim=True).clamp(min=0)
        e = (scores - m).exp()
        return e / ((-m).exp() + e.sum(-1, keepdim=True))


SWEEP = Sweep(
    name="softmax1",
    tasks=[{{"name": "mqar", "vocab": 16, "length": 16, "num_kv_pairs": 2}}],
    mechanisms=[{{"normaliser": "softmax"}}, {{"normaliser": "{name}"}}],
    seeds=[0, 1],
    widths=[16],
    model={{"n_layers": 1, "n_heads": 2}},
    train=TrainConfig(steps={steps}, batch_size=8, eval_every={steps}, eval_examples=16),
)
"""


def softmax1_sweep(folder: Path, name: str = "softmax1", steps: int = 10) -> Path:
    """A sweep file in ``folder`` that registers ``name`` and runs it beside softmax: 2 mechanisms × 2 seeds."""
    path = folder / "softmax1_sweep.py"
    path.write_text(SOFTMAX1_SWEEP.format(name=name, steps=steps))
    return path


def attnlab(
    *args: str, env: dict[str, str] | None = None, cwd: Path = REPO, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """``attnlab ARGS`` in a fresh process (workers, entry points and sys.path as a user gets them)."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [ATTNLAB, *args], capture_output=True, text=True, timeout=timeout, env=full_env, cwd=cwd, check=False
    )
