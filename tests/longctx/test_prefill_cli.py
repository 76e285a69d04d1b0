"""``attnlab longctx prefill``: bad options are one line (field, value, allowed values); the outputs' format.

The command itself needs SmolLM2 and minutes; here every option is refused before the model loads, and the
experiment's timing and outputs run on tiny tensors and rows.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from attnlab.cli import app
from attnlab.cli.longctx_outputs import write_prefill_outputs as write_outputs
from attnlab.experiments.sparse_prefill import PrefillRow, markdown_table, parse_patterns, time_methods
from attnlab.longctx.prefill.patterns import PatternSpec

runner = CliRunner()


@pytest.mark.parametrize(
    ("args", "start"),
    [
        (
            ["--patterns", "dense,nope"],
            "error: patterns='nope': unknown sparse prefill pattern (allowed: dense, a-shape",
        ),
        (["--lengths", "2048,x"], "error: lengths='2048,x'"),
        (["--lengths", "64"], "error: lengths='64': every length must be at least 128"),
        (["--keys", "16"], "error: keys=16: the key budget must be at least 2 blocks"),
        (["--rope", "pi"], "error: rope='pi': unknown RoPE choice (allowed: auto, none)"),
        (["--threads", "0"], "error: threads=0"),
        (["--repeats", "0"], "error: repeats=0"),
    ],
)
def test_bad_options_are_one_line(args: list[str], start: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("attnlab.lens.pretrained.smollm2.load_smollm2", lambda: pytest.fail("the model must not load"))
    result = runner.invoke(app, ["longctx", "prefill", "smollm2", *args])
    assert result.exit_code == 2, result.output
    lines = result.output.splitlines()
    assert len(lines) == 1 and lines[0].startswith(start), result.output


def test_an_unknown_model_is_one_line() -> None:
    result = runner.invoke(app, ["longctx", "prefill", "llama"])
    assert result.exit_code == 2 and result.output.startswith("error: model='llama': unknown model (allowed: smollm2)")


def test_parse_patterns_keeps_the_order() -> None:
    assert parse_patterns("dense, hip,a-shape") == ["dense", "hip", "a-shape"]


def test_time_methods_times_every_plan_on_the_same_tensors() -> None:
    g = torch.Generator().manual_seed(0)
    qkv = {layer: (torch.randn(4, 300, 16, generator=g), torch.randn(2, 300, 16, generator=g),
                   torch.randn(2, 300, 16, generator=g)) for layer in range(2)}  # fmt: skip
    plans = {"a-shape@64": {layer: PatternSpec("a-shape", 64, 16) for layer in qkv}}
    timed = time_methods(qkv, {0: 0.25, 1: 0.25}, plans, repeats=2)
    dense, kernel, build, density = timed["a-shape@64"]
    assert dense > 0 and kernel > 0 and build >= 0 and 0 < density < 1


def test_outputs_are_a_csv_a_markdown_table_and_a_plot(tmp_path: Path) -> None:
    rows = [
        PrefillRow(2048, "dense", 0, 1.0, 1.5, 1.5, 0.0, 1.0, 10.0, 1.0, "rope"),
        PrefillRow(2048, "a-shape", 1024, 0.4, 1.5, 0.5, 0.01, 2.94, 10.1, 1.01, "rope"),
    ]
    paths = write_outputs(rows, tmp_path / "out", "# title")
    assert [p.name for p in paths] == ["prefill.csv", "prefill.md", "prefill.png"]
    with open(paths[0]) as f:
        table = list(csv.DictReader(f))
    assert table[1]["pattern"] == "a-shape" and float(table[1]["speedup"]) == 2.94
    assert "| 2048 | a-shape | 1024 | 40.0% | 1.500 | 0.500 | 0.010 | 2.94× | 10.100 | 1.0100 |" in markdown_table(rows)
    assert paths[2].read_bytes()[:4] == b"\x89PNG"
