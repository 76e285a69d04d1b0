"""``attnlab intervene lofit`` on a tiny stand-in for SmolLM2 (fast): it prints the comparison and the heads, and
bad input is one line with exit code 2, before the model is loaded where the input alone is wrong."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from typer.testing import CliRunner

from attnlab.cli.intervene import intervene_app
from attnlab.lens import inspect as lens
from attnlab.model.config import ModelConfig
from attnlab.model.transformer import TransformerLM

VOCAB = 20001  # MODEL_INFO["smollm2"] draws task ids from [100, 20000)
SMALL = ["--select-steps", "2", "--steps", "2", "--pear-steps", "2", "--batch", "2", "--seq-len", "5"]


class ByteTokenizer:
    """A stand-in for SmolLM2's tokenizer: one id per byte, shifted past the special ids."""

    def encode(self, text: str) -> SimpleNamespace:
        return SimpleNamespace(ids=[100 + b for b in text.encode()])


@pytest.fixture
def tiny(monkeypatch):
    model = TransformerLM(ModelConfig(vocab_size=VOCAB, d_model=16, n_heads=2, n_layers=3)).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.3)
    monkeypatch.setattr(lens, "load_model", lambda name: (model, ByteTokenizer()))
    return model


def invoke(*args: str):
    return CliRunner().invoke(intervene_app, list(args))


def one_line_error(result) -> str:
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    return lines[0]


def test_lofit_prints_the_comparison_and_the_heads(tiny) -> None:
    before = {k: v.clone() for k, v in tiny.state_dict().items()}
    result = invoke("lofit", "smollm2", "--k", "2", "--eval-batch", "4", "--text-chunks", "1", "--controls", *SMALL)
    assert result.exit_code == 0, result.output
    for text in ("no change", "PEAR, all heads", "PEAR, 2 heads (path patching)", "LoFiT, 2 heads", "LoFiT (‖A‖₂)",
                 "LoFiT's heads also in path patching", "LoFiT selection: step 2/2",
                 "offsets on 2 random heads", "LoFiT offsets, random heads: step 2/2", "K-th"):  # fmt: skip
        assert text in result.output, text
    assert all(torch.equal(before[k], v) for k, v in tiny.state_dict().items())


def test_bad_lofit_input_is_one_line(monkeypatch, tiny) -> None:
    assert "k=7" in one_line_error(invoke("lofit", "smollm2", "--k", "7", *SMALL))  # the stand-in has 6 heads

    def boom(name):
        raise AssertionError("the model must not be loaded for bad input")

    monkeypatch.setattr(lens, "load_model", boom)
    assert "smollm2" in one_line_error(invoke("lofit", "gpt2"))
    assert "k=0" in one_line_error(invoke("lofit", "smollm2", "--k", "0"))
    assert "l1=-1.0" in one_line_error(invoke("lofit", "smollm2", "--l1", "-1"))
    assert "select_lr=0.0" in one_line_error(invoke("lofit", "smollm2", "--select-lr", "0"))
    assert "steps=0" in one_line_error(invoke("lofit", "smollm2", "--steps", "0"))
