"""``attnlab explain`` prints each layer's path and rule, the same answer ``explain_model`` gives."""

from __future__ import annotations

import importlib.util

import pytest
from typer.testing import CliRunner

from attnlab.cli import app
from attnlab.model.explain import explain_model
from attnlab.sweeps import load_sweep

runner = CliRunner()


def layer_lines(output: str) -> list[list[str]]:
    return [line.split() for line in output.splitlines() if line.startswith("blocks.")]


def test_the_demo_models_each_layer_with_the_path_explain_model_chooses() -> None:
    result = runner.invoke(app, ["explain"])
    assert result.exit_code == 0, result.output
    models = {run.model.canonical_json(): run.model for run in load_sweep("quick").runs()}
    expected = [row for model in models.values() for row in explain_model(model)]
    printed = layer_lines(result.output)
    assert len(printed) == len(expected) == 2 * len(models)  # every layer of every distinct demo model
    for line, row in zip(printed, expected, strict=True):
        assert line[:9] == [row.module, str(row.layer), row.site, row.normaliser, row.heads, row.position,
                            row.backend, row.path, row.rule]  # fmt: skip


def test_a_sigmoid_alibi_window_model() -> None:
    attention = '{"normaliser": "sigmoid", "position": "alibi", "window": 8}'
    result = runner.invoke(app, ["explain", "--attention", attention, "--seq-len", "64"])
    assert result.exit_code == 0, result.output
    lines = layer_lines(result.output)
    assert [line[3:6] for line in lines] == [["sigmoid", "mha", "alibi"]] * 2
    assert all(line[7] == "reference" for line in lines)  # sigmoid has no SDPA form on backend auto


def test_a_hook_on_the_pattern_sends_that_layer_to_the_reference() -> None:
    result = runner.invoke(app, ["explain", "--attention", '{"normaliser": "softmax"}', "--hook",
                                 "blocks.0.attn.hook_pattern"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert [line[7:9] for line in layer_lines(result.output)] == [
        ["reference", "weights-wanted"],
        ["sdpa", "plain-sdpa"],
    ]


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (["--attention", "{bad"], "attention='{bad'"),
        (["--attention", "[1, 2]"], "attention='[1, 2]'"),
        (["--attention", '{"normaliser": "sofmax"}'], "ModelConfig.attention.normaliser='sofmax'"),
        (["--dtype", "float8"], "dtype='float8'"),
        (["--device", "tpu"], "device='tpu'"),
        (["--hook", "blocks.9.attn.hook_pattern"], "hooks='blocks.9.attn.hook_pattern'"),
        (["no_such_preset"], "no_such_preset"),
    ],
)
def test_bad_input_is_one_line(args: list[str], field: str) -> None:
    result = runner.invoke(app, ["explain", *args])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and field in lines[0], result.output


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")
def test_on_cuda_a_sigmoid_model_takes_the_triton_kernels_and_softmax_stays_on_sdpa() -> None:
    """Explained for CUDA (on a machine without one: as a GPU with this environment would run it)."""
    for attention, path, rule in (
        ('{"normaliser": "sigmoid"}', "triton", "auto-on-triton"),
        ('{"normaliser": "softmax"}', "sdpa", "plain-sdpa"),
        ('{"normaliser": "softmax", "position": "t5"}', "flex", "auto-flex-on-cuda"),
    ):
        args = ["explain", "--attention", attention, "--seq-len", "64", "--device", "cuda", "--dtype", "bfloat16"]
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        assert {(line[7], line[8]) for line in layer_lines(result.output)} == {(path, rule)}, result.output
