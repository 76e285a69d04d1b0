"""``bench/device_check.py --quick`` runs on any machine and says, for each step it cannot run, why."""

from __future__ import annotations

import pytest
import torch

from attnlab.benchmarks import device_check


def test_quick_runs_what_it_can_and_says_what_it_skipped(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        device_check.main(["--quick"])
    out = capsys.readouterr().out
    assert done.value.code == 0, out
    for step in ("== equivalence", "== speed", "== training"):
        assert step in out
    assert " passed" in out  # the device tests of training ran
    assert out.count("tokens/s") == 2  # softmax and sigmoid trained on the device
    skipped = [line for line in out.splitlines() if line.startswith("skipped: ")]
    assert any("--quick" in line for line in skipped)
    if not torch.cuda.is_available():
        assert "skipped: compiled Triton kernels on cuda: " in out
        assert "skipped: Triton kernels against SDPA on cuda: torch sees no CUDA device" in out
        assert "skipped: the bench model on a GPU: no CUDA device" in out
