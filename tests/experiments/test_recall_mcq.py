"""``recall_circuit`` and ``mcq_circuit`` on a tiny float64 model, their edits, and the two commands end to end.

Tolerance: float64 (ε = 2.2e-16); every value is a mean of at most ~10^5 rounded operations on numbers of
magnitude ≤ 100 (3 layers of width 32), so chunking the prompts differently moves it by far less than
ATOL = 1e-9, while a prompt counted twice, a wrong position or a wrong head moves it by ≥ 1e-3.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from choice_helpers import ChoiceTokenizer, tiny_choice_lm
from torch import Tensor, nn
from typer.testing import CliRunner

from attnlab.experiments.mcq import _scores, edit_scores, mcq_circuit, mcq_scores
from attnlab.experiments.prompts.mcq import arithmetic_questions, fact_questions, mcq_prompts
from attnlab.experiments.prompts.recall import answer_token, candidate_facts, recall_prompts
from attnlab.experiments.recall import Edit, edit_rates, head_edits, known_facts, recall_circuit, recall_rates
from attnlab.hook_points import hooks
from attnlab.lens.attribution import attribution_names, direct_logit_attribution
from attnlab.lens.capture import run_with_cache
from attnlab.lens.interventions import zero_ablate
from attnlab.lens.patching import logit_diff, normalised
from attnlab.lens.residual import at_position
from conftest import liven

ATOL = 1e-9
WORDS = ChoiceTokenizer()


def tiny() -> nn.Module:
    return liven(tiny_choice_lm(len(WORDS.vocab))).double().requires_grad_(False)


def recall_set(n: int = 7) -> Any:
    facts = candidate_facts(WORDS)
    return recall_prompts(WORDS, facts[:: len(facts) // n][:n], seed=1, bos=1)


def manual_patching(model: nn.Module, p: Any) -> Tensor:
    """Each head's last-position output taken from the bare run, one forward pass per head."""
    _, bare = run_with_cache(model, p.bare, lambda name: name.endswith("hook_z"))
    rows = torch.arange(len(p))
    grid = torch.zeros(3, 4, dtype=torch.float64)
    for layer in range(3):
        for head in range(4):

            def fn(z: Tensor, layer: int = layer, head: int = head) -> Tensor:
                z = z.clone()
                z[rows, head, p.end] = bare[f"blocks.{layer}.attn.hook_z"][rows, head, p.bare_end]
                return z

            with hooks(model, {f"blocks.{layer}.attn.hook_z": fn}):
                grid[layer, head] = logit_diff(model(p.context), p.memory, p.counter, p.end).mean()
    return grid


def test_recall_circuit_is_the_lens_on_the_whole_set_whatever_the_chunking() -> None:
    model, p = tiny(), recall_set()
    result = recall_circuit(model, p, batch_size=5, prompt_batch=3)
    other = recall_circuit(model, p, batch_size=7, prompt_batch=4)
    torch.testing.assert_close(result.patching, other.patching, rtol=0, atol=ATOL)
    torch.testing.assert_close(result.attribution, other.attribution, rtol=0, atol=ATOL)
    bare_at = at_position(model(p.bare), p.bare_end, 1)
    context_logits, cache = run_with_cache(model, p.context, attribution_names(model))
    context_at = at_position(context_logits, p.end, 1)
    for rates, at in ((result.bare, bare_at), (result.context, context_at)):
        assert rates.memory == pytest.approx(float((at.argmax(-1) == p.memory).double().mean()))
        assert rates.context == pytest.approx(float((at.argmax(-1) == p.counter).double().mean()))
        diff = at.gather(1, p.memory[:, None]) - at.gather(1, p.counter[:, None])
        assert rates.logit_diff == pytest.approx(float(diff.mean()), abs=ATOL) and rates.n == len(p)
    attribution = direct_logit_attribution(model, cache, p.memory, p.counter, p.end).heads.mean(0)
    torch.testing.assert_close(result.attribution, attribution, rtol=0, atol=ATOL)
    expected = normalised(manual_patching(model, p), result.bare.logit_diff, result.context.logit_diff)
    torch.testing.assert_close(result.patching, expected, rtol=0, atol=ATOL)
    assert result.patching.std() > 1e-3 and result.attribution.std() > 1e-3 and result.n_patched == len(p)


def test_patching_can_be_limited_to_the_first_prompts() -> None:
    model, p = tiny(), recall_set()
    some = recall_circuit(model, p, batch_size=8, prompt_batch=2, patch_prompts=3)
    head = recall_circuit(model, p.select(range(3)), batch_size=8, prompt_batch=3)
    torch.testing.assert_close(some.patching, head.patching, rtol=0, atol=ATOL)
    assert some.n_patched == 3 and some.context.n == len(p)
    assert recall_circuit(model, p, patch_prompts=0).patching.isnan().all()


def test_heads_are_the_extremes_of_their_grids() -> None:
    result = recall_circuit(tiny(), recall_set(), batch_size=12)
    grid = result.attribution
    memory, context = result.heads(3)
    assert [grid[h] for h in memory] == sorted((grid[h] for h in memory), reverse=True)
    assert [grid[h] for h in context] == sorted(grid[h] for h in context)
    assert all(grid[h] > 0 for h in memory) and all(grid[h] < 0 for h in context) and memory and context
    assert memory[0] == divmod(int(grid.argmax()), 4) and context[0] == divmod(int(grid.argmin()), 4)
    restoring = result.restoring(2)
    assert restoring[0] == divmod(int(result.patching.argmax()), 4) and all(result.patching[h] > 0 for h in restoring)


def same(a: Any, b: Any) -> bool:
    """Equal rates (the logit difference up to the summation order of another chunking)."""
    return (a.n, a.memory, a.context) == (b.n, b.memory, b.context) and abs(a.logit_diff - b.logit_diff) < ATOL


def test_edits_are_the_interventions_they_name() -> None:
    model, p = tiny(), recall_set()
    edits = head_edits({"context": [(2, 1)], "memory": [(1, 0), (2, 3)]}, [0.0, 2.0], random=[(0, 2)])
    assert [e.label for e in edits] == [
        "none", "ablate context heads", "context heads × 2", "ablate memory heads", "memory heads × 2",
        "ablate 1 random heads",
    ]  # fmt: skip
    rows = edit_rates(model, p, edits, prompt_batch=3)
    assert same(rows[0][1], recall_rates(model, p)) and same(rows[0][2], recall_rates(model, p, bare=True))
    with zero_ablate(model, [(1, 0), (2, 3)]):
        assert same(rows[3][1], recall_rates(model, p, prompt_batch=5))
    assert not same(rows[3][1], rows[0][1]) and not same(rows[4][1], rows[0][1])
    assert same(edit_rates(model, p, [Edit("× 1", ((2, 1),), 1.0)])[0][1], rows[0][1])


class Always(nn.Module):
    """A language model that predicts one token everywhere."""

    def __init__(self, token: int, vocab: int) -> None:
        super().__init__()
        self.token, self.vocab = token, vocab

    def forward(self, tokens: Tensor) -> Tensor:
        out = torch.zeros(*tokens.shape, self.vocab)
        out[..., self.token] = 1.0
        return out


def test_known_facts_are_those_answered_without_context() -> None:
    facts = candidate_facts(WORDS)
    paris = answer_token(WORDS, "Paris")
    known = known_facts(Always(paris, len(WORDS.vocab)), WORDS, facts, bos=1, batch=5)
    assert known == [f for f in facts if f.answer == "Paris"] and len(known) >= 2


# ------------------------------------------------------------------------------------------------ multiple choice
def mcq_set() -> Any:
    facts = candidate_facts(WORDS)
    return mcq_prompts(WORDS, fact_questions(facts[::9], seed=0) + arithmetic_questions(3, seed=0), bos=1)


def test_scores_count_choices_by_position() -> None:
    choice = torch.tensor([0, 0, 0, 3, 0, 1, 2, 0])
    correct = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    s = _scores(choice, correct)
    assert s.accuracy.tolist() == [1.0, 0.5, 0.5, 0.5] and s.choices.tolist() == [5 / 8, 1 / 8, 1 / 8, 1 / 8]
    assert s.anchor == 0 and s.overall == pytest.approx(0.625) and s.spread == pytest.approx(0.5)


def test_mcq_circuit_is_the_lens_on_the_whole_set_whatever_the_chunking() -> None:
    model, p = tiny(), mcq_set()
    result = mcq_circuit(model, p, prompt_batch=5)
    other = mcq_circuit(model, p, prompt_batch=3)
    for name in ("lens", "bias", "correct"):
        torch.testing.assert_close(getattr(result, name), getattr(other, name), rtol=0, atol=ATOL)
    logits, cache = run_with_cache(model, p.tokens, attribution_names(model))
    at = at_position(logits, p.end, 1)[:, p.letters]
    choice = at.argmax(-1)
    expected = _scores(choice, p.correct)
    assert torch.equal(result.scores.accuracy, expected.accuracy)
    assert torch.equal(result.scores.choices, expected.choices)
    assert torch.equal(mcq_scores(model, p, prompt_batch=4).accuracy, expected.accuracy)
    torch.testing.assert_close(result.lens[-1], at.mean(0), rtol=0, atol=ATOL)  # the lens after the last layer
    assert result.lens.shape == (4, 4)
    anchor = result.scores.anchor
    right = p.letters[p.correct]
    off = p.correct != anchor
    dla = direct_logit_attribution(model, cache, p.letters[anchor].expand_as(right), right, p.end).heads
    torch.testing.assert_close(result.bias, dla[off].mean(0), rtol=0, atol=ATOL)
    per_other = [
        direct_logit_attribution(model, cache, right, p.letters[(p.correct + k) % 4], p.end).heads for k in (1, 2, 3)
    ]
    torch.testing.assert_close(result.correct, sum(per_other).mean(0) / 3, rtol=0, atol=ATOL)
    assert all(result.bias[h] > 0 for h in result.bias_heads(3))


def test_edit_scores_apply_each_edit() -> None:
    model, p = tiny(), mcq_set()
    rows = edit_scores(model, p, head_edits({"bias": [(2, 0), (1, 3)]}, [0.0], random=[(0, 1)]), prompt_batch=4)
    assert [e.label for e, _ in rows] == ["none", "ablate bias heads", "ablate 1 random heads"]
    assert torch.equal(rows[0][1].choices, mcq_scores(model, p).choices)
    with zero_ablate(model, [(2, 0), (1, 3)]):
        assert torch.equal(rows[1][1].choices, mcq_scores(model, p).choices)


# ------------------------------------------------------------------------------------------------ the commands
runner = CliRunner()


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["recall", "gpt2"], "error: model='gpt2': no loader for this model (allowed: smollm2)"),
        (["mcq", "gpt2"], "error: model='gpt2': no loader for this model (allowed: smollm2)"),
        (["recall", "smollm2", "--relations", "capital,colour"], "error: relations='colour': not a relation"),
        (["recall", "smollm2", "--scales", "0,x"], "error: scales='x': not a number"),
        (["recall", "smollm2", "--per-fact", "0"], "error: per_fact=0: must be at least 1"),
        (["recall", "smollm2", "--top", "0"], "error: top=0: must be at least 1"),
        (["recall", "smollm2", "--patch-prompts", "-1"], "error: patch_prompts=-1: must be at least 0"),
        (["mcq", "smollm2", "--n-arithmetic", "100"], "error: n_arithmetic=100: must be between 0 and 81"),
        (["mcq", "smollm2", "--prompt-batch", "0"], "error: prompt_batch=0: must be at least 1"),
        (["mcq", "smollm2", "--threads", "0"], "error: threads=0: must be at least 1"),
    ],
)
def test_bad_input_exits_2_with_one_line(args: list[str], expected: str) -> None:
    from attnlab.cli.main import app

    result = runner.invoke(app, ["circuits", *args])
    assert result.exit_code == 2
    assert result.output.startswith(expected) and result.output.count("\n") == 1


@pytest.mark.parametrize("command", ["recall", "mcq"])
def test_the_commands_run_end_to_end_on_a_tiny_model(
    command: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import attnlab.cli.circuits as circuits
    import attnlab.experiments.recall as recall
    from attnlab.cli.main import app

    model = liven(tiny_choice_lm(len(WORDS.vocab)))
    monkeypatch.setitem(circuits.MODELS, "tiny", {"bos": 1, "pad": 0})
    monkeypatch.setattr(circuits, "load_model", lambda name: (model, WORDS))
    # a random model knows no fact: take every candidate as known
    monkeypatch.setattr(recall, "known_facts", lambda lm, tok, facts, **kw: list(facts))
    extra = ["--relations", "capital,opposite", "--patch-prompts", "4"] if command == "recall" else []
    args = ["circuits", command, "tiny", "--top", "2", "--out", str(tmp_path), *extra]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    wanted = {
        "recall": ["Held-out prompts", "ablate context heads", "memory heads × 2", "random heads"],
        "mcq": ["accuracy by the answer's position", "Logit lens", "bias heads × 0.5", "random heads"],
    }
    for text in wanted[command]:
        assert text in result.output
    summary = (tmp_path / "summary.md").read_text()
    assert summary.startswith(f"# attnlab circuits {command} tiny") and "| none |" in summary
    assert (tmp_path / "heads.csv").read_text().count("\n") == 3 * 4 + 1
    assert all(path.read_bytes().startswith(b"\x89PNG") for path in tmp_path.glob("*.png"))
    assert len(list(tmp_path.glob("*.png"))) == 2
