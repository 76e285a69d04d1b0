"""The ``longctx-passkey`` preset's parts with three seeds, for the passkey claims (a leading underscore: not a
paper module). A part keeps the preset's every setting (2 layers, 4 heads, width 64, passkey at T = 64 with 5
digits, lr 2e-3, 800 steps of 64 examples, early stop at 99%, evaluated at 1×, 2×, 4×, 8×), so its seed-0 runs are
the preset's own (runs are found by id) and claims on one part share its runs.

Time: the standard run's passkey rows printed 174–534 s per 800-step run on 2 shared cores (softmax 319 s,
docs/results/standard/report.md); a part of two mechanisms × three seeds is six such runs, two at a time: about
16 minutes on 2 cores.
"""

from __future__ import annotations

from typing import Any

from attnlab.runner.config import Sweep
from attnlab.sweeps.longctx_passkey import SWEEP as PRESET

SEEDS = [0, 1, 2]


def preset_part(part: str, name: str, **update: Any) -> Sweep:
    """The preset's part ``part`` with three seeds, renamed ``name``; ``update`` replaces top-level fields."""
    found = next(p for p in PRESET.parts if p.name == part)
    return Sweep.model_validate({**found.model_dump(), "name": name, "seeds": SEEDS, **update})
