"""``attnlab intervene``'s sub-application on a tiny stand-in for SmolLM2 (fast): every command runs and prints its
table, bad input is one line with exit code 2, and the experiments' bookkeeping is right."""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest
import torch
from typer.testing import CliRunner

from attnlab.cli.intervene import intervene_app
from attnlab.experiments.ablation import ablation_experiment, scaling_experiment
from attnlab.experiments.text import reference_text, text_chunks
from attnlab.lens import inspect as lens
from attnlab.lens.copy_task import CopyTask, measure_copy
from attnlab.model.config import ModelConfig
from attnlab.model.transformer import TransformerLM

VOCAB = 20001  # MODEL_INFO["smollm2"] draws task ids from [100, 20000)


class ByteTokenizer:
    """A stand-in for SmolLM2's tokenizer: one id per byte, shifted past the special ids."""

    def encode(self, text: str) -> SimpleNamespace:
        return SimpleNamespace(ids=[100 + b for b in text.encode()])


@pytest.fixture
def tiny(monkeypatch):
    model = TransformerLM(ModelConfig(vocab_size=VOCAB, d_model=16, n_heads=2, n_layers=3)).eval()
    with torch.no_grad():  # far from the near-uniform GPT-2 initialisation, so interventions visibly matter
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


def test_unknown_model_and_bad_heads_fail_before_loading(monkeypatch) -> None:
    def boom(name):
        raise AssertionError("the model must not be loaded for bad input")

    monkeypatch.setattr(lens, "load_model", boom)
    assert "smollm2" in one_line_error(invoke("ablate", "gpt2"))
    assert "not a head" in one_line_error(invoke("ablate", "smollm2", "--heads", "L18"))
    assert "not a number" in one_line_error(invoke("scale", "smollm2", "--coefs", "0,x"))
    assert "not both" in one_line_error(invoke("pear", "smollm2", "--heads", "L1H0", "--layers", "1"))
    assert "beta" in one_line_error(invoke("act", "smollm2", "--beta", "2"))


def test_heads_outside_the_model_are_one_line_errors(tiny) -> None:
    assert "no such layer" in one_line_error(invoke("ablate", "smollm2", "--heads", "L9H0"))
    assert "no such head" in one_line_error(invoke("scale", "smollm2", "--heads", "L1H5"))
    assert "mode" in one_line_error(invoke("ablate", "smollm2", "--heads", "L1H0", "--mode", "half"))


def test_ablate_prints_the_table_with_random_controls(tiny) -> None:
    result = invoke("ablate", "smollm2", "--top-k", "2", "--seq-len", "6", "--batch", "2", "--random-draws", "2")
    assert result.exit_code == 0, result.output
    for text in ("zero-ablate chosen", "random #1", "random #2", "copy loss", "induction scores"):
        assert text in result.output
    result = invoke("ablate", "smollm2", "--heads", "L1H0", "--mode", "mean", "--seq-len", "6", "--batch", "2")
    assert result.exit_code == 0 and "mean-ablate chosen" in result.output


def test_ablation_experiment_numbers_are_the_measured_ones(tiny) -> None:
    task = CopyTask(n=6, low=100, high=20000, bos=1)
    res = ablation_experiment(tiny, [(2, 1)], task=task, batch=3, seed=4, random_draws=1)
    tokens = task.batch(3, torch.Generator().manual_seed(4))
    assert res.before == measure_copy(tiny, tokens, task)
    assert res.after != res.before  # ablating a head of a lively model changes the predictions
    assert len(res.controls) == 1 and (2, 1) not in res.controls[0].heads and len(res.controls[0].heads) == 1


def test_scale_by_one_reproduces_the_unchanged_model(tiny) -> None:
    task = CopyTask(n=6, low=100, high=20000, bos=1)
    res = scaling_experiment(tiny, [(0, 1), (2, 0)], [0.0, 1.0, 3.0], task=task, batch=2)
    by_c = dict(res.rows)
    assert by_c[1.0] == res.before and by_c[0.0] != res.before and by_c[3.0] != res.before
    result = invoke("scale", "smollm2", "--heads", "L0H1", "--coefs", "0,1", "--seq-len", "6", "--batch", "2")
    assert result.exit_code == 0, result.output
    row_one = next(line for line in result.output.splitlines() if re.search(r"│\s+1\s+│", line))
    assert "+0.000" in row_one


def test_pear_prints_held_out_copying_before_and_after(tiny) -> None:
    args = ["--layers", "1-2", "--steps", "3", "--batch", "2", "--seq-len", "5", "--eval-batch", "4"]
    result = invoke("pear", "smollm2", *args, "--text-chunks", "1", "--top", "3")
    assert result.exit_code == 0, result.output
    for text in ("before", "after", "held-out copying accuracy", "step 3/3", "below 1"):
        assert text in result.output


def test_pear_select_reweights_the_heads_path_patching_found(tiny) -> None:
    args = ["--select", "2", "--steps", "2", "--batch", "2", "--seq-len", "5", "--eval-batch", "4"]
    result = invoke("pear", "smollm2", *args, "--text-chunks", "0", "--top", "2")
    assert result.exit_code == 0, result.output
    assert "path patching" in result.output and "selected L" in result.output and "2 coefficients" in result.output
    assert "select=2" in one_line_error(invoke("pear", "smollm2", "--select", "2", "--layers", "1"))
    assert "select=0" in one_line_error(invoke("pear", "smollm2", "--select", "0"))


def test_act_prints_before_and_after_on_text(tiny) -> None:
    result = invoke(
        "act", "smollm2", "--seq-len", "24", "--calib-chunks", "1", "--heldout-chunks", "2", "--min-layer", "1"
    )
    assert result.exit_code == 0, result.output
    assert "held-out loss" in result.output and "none" in result.output and "candidate heads" in result.output


def test_text_chunks_come_from_both_ends_without_overlap() -> None:
    tok = ByteTokenizer()
    first, last = text_chunks(tok, 16, 3), text_chunks(tok, 16, 3, from_end=True)
    assert first.shape == last.shape == (3, 16) and (first[:, 0] == 1).all()
    ids = tok.encode(reference_text()).ids
    assert first[0, 1:].tolist() == ids[:15] and last[-1, 1:].tolist() == ids[-15:]
