"""``--gpus``: the local runner pins one worker to each GPU (CUDA_VISIBLE_DEVICES); Ray asks for GPUs per run.

This machine may have no GPU: the GPU count is simulated where the test only needs torch to report one, and the
pool's pinning is read back from real spawned workers (they set the variable whether or not a GPU is there).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from attnlab.errors import ConfigError
from attnlab.model.config import ModelConfig
from attnlab.runner.config import RunConfig
from attnlab.runner.local import _new_pool, check_gpus
from attnlab.runner.store import Store
from attnlab.tasks.mqar import MQARConfig


def fake_gpus(monkeypatch: pytest.MonkeyPatch, count: int) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)


def test_more_gpus_than_present_is_one_line_naming_the_count(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_gpus(monkeypatch, 2)
    check_gpus(2, None)
    with pytest.raises(ConfigError, match=r"^gpus=3: 2 GPU\(s\) present here \(allowed: 0 to 2\)$"):
        check_gpus(3, None)
    with pytest.raises(ConfigError, match=r"^workers=1: --gpus 2 runs one worker per GPU \(allowed: 2\)$"):
        check_gpus(2, 1)


def test_without_a_gpu_the_cli_refuses_gpus_in_one_line() -> None:
    from typer.testing import CliRunner

    from attnlab.cli import app

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    result = CliRunner().invoke(app, ["run", "quick", "--gpus", "1", "--db", "/nonexistent/never.sqlite"])
    assert result.exit_code == 2
    assert "gpus=1: 0 GPU(s) present here (allowed: 0 to 0)" in result.output


def test_each_pool_worker_takes_one_of_the_visible_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    """Workers inherit CUDA_VISIBLE_DEVICES=5,7 and each keeps one of them: 5 or 7, never both."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5,7")
    pool = _new_pool(2, 1, gpus=2)
    try:
        seen = {pool.submit(os.getenv, "CUDA_VISIBLE_DEVICES").result() for _ in range(6)}
    finally:
        pool.shutdown()
    assert seen and seen <= {"5", "7"}


def test_ray_refuses_more_gpus_per_run_than_the_cluster_has(tmp_path: Path) -> None:
    pytest.importorskip("ray")
    from attnlab.runner.ray_backend import run_ray

    run = RunConfig.parse(
        {
            "model": ModelConfig(vocab_size=16, d_model=16, n_layers=1, n_heads=2, max_seq_len=16).model_dump(),
            "task": MQARConfig(vocab=16, length=16, num_kv_pairs=2).model_dump(),
            "train": {"steps": 1},
        }
    )
    with Store(tmp_path / "r.sqlite") as store, pytest.raises(ConfigError, match=r"^gpus=64: the Ray cluster has"):
        run_ray([run], store, threads=1, gpus=64)
    with pytest.raises(ConfigError, match=r"^gpus=-1: must not be negative"):
        run_ray([run], Store(tmp_path / "s.sqlite"), gpus=-1)
