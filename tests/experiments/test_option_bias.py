"""The position-bias evaluation without the pretrained weights (a tiny float64 Llama, prompts of token ids): the
option labels follow ``Question.options``, PINE and CCA never flip on moved records or on rotated options without
letters (their outputs do not depend on the documents' order), Uni-Encoder never flips on rotated options, the
table's rows and columns, and the methods' one-line errors."""

from __future__ import annotations

import pytest
import torch

from attnlab.checks import liven
from attnlab.errors import ConfigError
from attnlab.experiments.option_bias import OptionPrompt
from attnlab.experiments.pine import LAYOUT_METHODS, PositionBias, Retrieval, check_methods, position_bias
from attnlab.experiments.prompts.mcq import Question
from attnlab.lens.pretrained.smollm2 import LlamaLM, LlamaSpec

SPEC = LlamaSpec(
    n_layers=2, d_model=32, d_mlp=64, n_heads=4, n_kv_heads=2, vocab_size=41, rope_base=10000.0,
    rms_eps=1e-5, context_length=64,
)  # fmt: skip


def llama() -> LlamaLM:
    return liven(LlamaLM(SPEC)).eval().double()  # type: ignore[return-value]


def draw(n: int) -> list[int]:
    return torch.randint(5, 41, (n,)).tolist()


def test_accuracy_and_flip_rate_count_what_they_say() -> None:
    res = PositionBias(
        {"plain": torch.tensor([[5, 5, 7], [6, 6, 6]]), "pine": torch.tensor([[5, 5, 5], [6, 6, 6]])},
        answers=torch.tensor([5, 6]),
    )
    assert res.accuracy("plain") == [1.0, 1.0, 0.5]
    assert res.accuracy("pine") == [1.0, 1.0, 1.0]
    assert res.flip_rate("plain") == 0.5
    assert res.flip_rate("pine") == 0.0
    lines = res.table().splitlines()
    assert lines[0].split() == ["position", "plain", "pine"]
    assert lines[3].split() == ["2", "0.50", "1.00"]
    assert lines[-2].split() == ["mean", "0.83", "1.00"] and lines[-1].split() == ["flips", "0.50", "0.00"]


def test_an_options_label_is_its_content() -> None:
    q = Question("Which?", "right", ("w1", "w2", "w3"))
    base = [q.answer, *q.distractors]
    for r in range(4):
        assert [base[OptionPrompt.content(r, j)] for j in range(4)] == q.options(r)
        assert q.options(r)[r] == "right"  # the answer at letter r


def test_pine_and_cca_never_flip_on_moved_records() -> None:
    torch.manual_seed(0)
    prompts = [
        Retrieval(prefix=draw(2), records=[draw(n) for n in (3, 4, 2)], suffix=draw(2), asked=1, answer=7)
        for _ in range(3)
    ]
    res = position_bias(llama(), prompts, list(LAYOUT_METHODS))
    assert res.flip_rate("pine") == 0.0 and res.flip_rate("cca") == 0.0
    assert res.predictions["plain"].shape == (3, 3)
    # the plain model's predictions do move (so the flip rate can be non-zero)
    logits = [llama()(prompts[0].moved(g)[0])[0, -1] for g in range(3)]
    assert (logits[0] - logits[2]).abs().max() > 1e-3


def option_prompt(letters: list[int] | None) -> OptionPrompt:
    options = [[5 + i, *draw(n)] for i, n in enumerate((0, 1, 2, 0))]  # content 0 is the answer; distinct starts
    mark = [30, 31, 32, 33] if letters is not None else [34] * 4
    lines = [[[mark[j], 4, *options[OptionPrompt.content(r, j)], 3] for j in range(4)] for r in range(4)]
    return OptionPrompt(
        prefix=[1, *draw(4)], lines=lines, suffix=draw(2), letters=letters, cloze=[1, *draw(5)], options=options
    )


def test_uni_encoder_never_flips_on_rotated_options() -> None:
    torch.manual_seed(1)
    prompts = [option_prompt([30, 31, 32, 33]) for _ in range(4)]
    res = position_bias(llama(), prompts, ["plain", "uni-encoder"], position_names=("A", "B", "C", "D"))
    assert res.flip_rate("uni-encoder") == 0.0
    assert res.table().splitlines()[1].split()[0] == "A"
    assert set(res.predictions["plain"].flatten().tolist()) <= {0, 1, 2, 3}  # labels are option contents


def test_methods_are_checked() -> None:
    allowed = ("plain", "pine")
    check_methods(["pine", "plain"], allowed)
    for methods, line in (
        ([], "methods='': needs at least one method"),
        (["pine", "nope"], "methods='nope': not a method of this task"),
        (["pine", "pine"], "methods='pine,pine': lists a method twice"),
    ):
        with pytest.raises(ConfigError, match=line):
            check_methods(methods, allowed)
    retrieval = Retrieval(prefix=[1], records=[[2], [3]], suffix=[4], asked=0, answer=2)
    with pytest.raises(ConfigError, match="methods='uni-encoder': not a method of this task"):
        position_bias(llama(), [retrieval], ["uni-encoder"])


def test_without_letters_pine_and_cca_never_flip_on_rotated_options() -> None:
    torch.manual_seed(2)
    prompts = [option_prompt(None) for _ in range(4)]
    res = position_bias(llama(), prompts, ["plain", "pine", "cca"])
    assert res.flip_rate("pine") == 0.0 and res.flip_rate("cca") == 0.0
    # the label is read off the options' first tokens, in the question's order
    logits = torch.zeros(41)
    logits[prompts[0].options[2][0]] = 1.0
    assert prompts[0].label(3, logits) == 2
