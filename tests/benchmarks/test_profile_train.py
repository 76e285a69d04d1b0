"""``bench/profile_train.py``: a few steps of one demo mechanism print every phase for both variants, and the
replayed steps of both variants and of ``fit`` itself agree bitwise (the script's own check)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "profile_train.py"


def test_a_short_profile_prints_the_phases_and_finds_the_variants_bitwise_equal() -> None:
    command = [sys.executable, str(SCRIPT), "--steps", "3", "--rounds", "1", "--mechanisms", "sigmoid"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "sigmoid (path reference): cpu ms per step" in out
    for phase in ("data", "forward", "backward", "optimiser", "evaluation", "rest", "tokens/s", "GFLOP/s"):
        assert phase in out
    assert "bitwise equal: {'replay_losses': True, 'fit_losses': True, 'final_params': True}" in out


def test_an_unknown_mechanism_is_one_line_naming_the_allowed_ones() -> None:
    command = [sys.executable, str(SCRIPT), "--mechanisms", "nope"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 2
    assert "--mechanisms nope: not a demo mechanism (allowed: softmax, sigmoid, cog, lssa" in done.stderr
