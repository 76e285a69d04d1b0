"""``attnlab speed --device``: the benchmark's cases built and run on each device present (absent ones skipped with
the reason), and a device that is not here refused in one line before any timing."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from attnlab.benchmarks.speed import QUICK_CASES, select_cases
from attnlab.benchmarks.speed.timing import check_cases, make_inputs, time_cases
from attnlab.cli.speed import speed_app
from attnlab.train.device import devices_present

DEVICES = ["cpu", "cuda", "mps"]


def on(device: str) -> torch.device:
    if device not in devices_present():
        pytest.skip(f"no {device} device on this machine (present: {', '.join(devices_present())})")
    return torch.device(device)


@pytest.mark.parametrize("device", DEVICES)
def test_the_quick_cases_pass_their_check_and_are_timed_on_the_device(device: str) -> None:
    here = on(device)
    q, k, v, d_out = make_inputs(16, device=here)
    assert {t.device.type for t in (q, k, v, d_out)} == {here.type}
    torch.testing.assert_close(q.cpu(), make_inputs(16)[0].detach(), rtol=0, atol=0)  # the same numbers anywhere
    cases = select_cases(QUICK_CASES, flex=False, xt=False)
    checks = check_cases(cases, t=32, device=here)
    assert all(c["ok"] for c in checks.values()), checks
    rows, _ = time_cases(cases, [32], repeats=1, long_repeats=1, dense_limit=64, echo=lambda _: None, device=here)
    assert {r["case"] for r in rows if not r["skipped"]} == {c.name for c in cases}


@pytest.mark.parametrize("device", ["cuda", "cuda:3", "mps", "tpu"])
def test_a_device_that_is_not_here_is_one_line_before_any_timing(device: str, tmp_path) -> None:
    if device in devices_present():
        pytest.skip(f"{device} is present on this machine")
    result = CliRunner().invoke(speed_app, ["--quick", "--device", device, "--out", str(tmp_path)])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "device" in lines[0] and device in lines[0], result.output
    assert not (tmp_path / "speed.json").exists()
