"""Counterfactual factual recall: "The capital of Poland is London. The capital of Poland is" → memory or context.

A fact is a relation template with a subject and a one-token answer ("The capital of {} is", "Poland", "Warsaw").
Its *bare* prompt is the template alone; its *context* prompt states a counterfactual answer first and then asks
again: "The capital of Poland is London. The capital of Poland is". The model answers either from memory (the
true fact, " Warsaw") or from the context (the counterfactual, " London"). This is the knowledge-conflict set-up
of Jin et al. 2024, "Cutting Off the Head Ends the Conflict: A Mechanism for Interpreting and Mitigating Knowledge
Conflicts in Language Models" (arXiv:2402.18154), and of Yu, Merullo & Pavlick 2023, "Characterizing Mechanisms
for Factual Recall in Language Models" (arXiv:2310.15910), whose counterfactual context repeats the query's own
sentence with another answer.

The counterfactual is another answer of the same relation (a city for a capital, a language for a language), so
both answers are plausible continuations and differ only in which source backs them. Answers are kept when
``" " + answer`` is one token of the given tokenizer; which facts a model actually knows is the experiment's
question (``attnlab.experiments.recall.known_facts`` keeps those it answers correctly without context). Everything
is drawn from ``random.Random(seed)``: the same seed, facts and tokenizer give the same prompts.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from attnlab.errors import ConfigError
from attnlab.experiments.prompts.ioi import encode_ids

# relation → (template with one subject slot, the prompt ends before the answer; (subject, answer) pairs)
RELATIONS: dict[str, tuple[str, tuple[tuple[str, str], ...]]] = {
    "capital": ("The capital of {} is", (
        ("Poland", "Warsaw"), ("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"),
        ("Japan", "Tokyo"), ("Russia", "Moscow"), ("China", "Beijing"), ("Egypt", "Cairo"), ("England", "London"),
        ("Greece", "Athens"), ("Portugal", "Lisbon"), ("Austria", "Vienna"), ("Ireland", "Dublin"),
        ("Norway", "Oslo"), ("Sweden", "Stockholm"), ("Canada", "Ottawa"), ("Australia", "Canberra"),
        ("Kenya", "Nairobi"), ("Turkey", "Ankara"), ("Cuba", "Havana"), ("Peru", "Lima"), ("Thailand", "Bangkok"),
        ("Belgium", "Brussels"), ("Hungary", "Budapest"), ("Finland", "Helsinki"), ("Denmark", "Copenhagen"),
        ("Iran", "Tehran"), ("Iraq", "Baghdad"), ("Syria", "Damascus"), ("Ukraine", "Kyiv"), ("Chile", "Santiago"),
        ("Scotland", "Edinburgh"), ("Wales", "Cardiff"), ("Romania", "Bucharest"), ("Bulgaria", "Sofia"),
    )),
    "language": ("The official language of {} is", (
        ("France", "French"), ("Germany", "German"), ("Spain", "Spanish"), ("Italy", "Italian"),
        ("Japan", "Japanese"), ("China", "Chinese"), ("Russia", "Russian"), ("Brazil", "Portuguese"),
        ("Greece", "Greek"), ("Poland", "Polish"), ("Turkey", "Turkish"), ("the Netherlands", "Dutch"),
        ("Sweden", "Swedish"), ("Egypt", "Arabic"), ("Mexico", "Spanish"), ("Korea", "Korean"),
        ("Israel", "Hebrew"), ("Iran", "Persian"), ("Finland", "Finnish"), ("Norway", "Norwegian"),
        ("Denmark", "Danish"), ("Hungary", "Hungarian"), ("Thailand", "Thai"), ("Vietnam", "Vietnamese"),
        ("England", "English"), ("Portugal", "Portuguese"), ("Argentina", "Spanish"), ("Ukraine", "Ukrainian"),
    )),
    "currency": ("The currency of {} is the", (
        ("Japan", "yen"), ("the United States", "dollar"), ("the United Kingdom", "pound"), ("India", "rupee"),
        ("Russia", "ruble"), ("China", "yuan"), ("Mexico", "peso"), ("Switzerland", "franc"), ("Germany", "euro"),
        ("France", "euro"), ("Korea", "won"), ("Turkey", "lira"), ("Israel", "shekel"), ("Brazil", "real"),
        ("Italy", "euro"), ("Canada", "dollar"), ("Australia", "dollar"), ("Argentina", "peso"),
    )),
    "landmark": ("The {} is in the city of", (
        ("Eiffel Tower", "Paris"), ("Colosseum", "Rome"), ("Big Ben", "London"), ("Kremlin", "Moscow"),
        ("Brandenburg Gate", "Berlin"), ("Acropolis", "Athens"), ("Forbidden City", "Beijing"),
        ("Sagrada Familia", "Barcelona"), ("Golden Gate Bridge", "San"), ("Louvre", "Paris"),
        ("Tower of London", "London"), ("Vatican", "Rome"), ("Leaning Tower", "Pisa"), ("Opera House", "Sydney"),
    )),
    "opposite": ("The opposite of {} is", (
        ("hot", "cold"), ("up", "down"), ("big", "small"), ("day", "night"), ("black", "white"),
        ("good", "bad"), ("fast", "slow"), ("happy", "sad"), ("open", "closed"), ("left", "right"),
        ("light", "dark"), ("old", "new"), ("rich", "poor"), ("love", "hate"), ("true", "false"),
        ("win", "lose"), ("early", "late"), ("north", "south"), ("east", "west"), ("inside", "outside"),
    )),
}  # fmt: skip


@dataclass(frozen=True)
class Fact:
    """One relation instance: ``RELATIONS[relation]`` 's template filled with ``subject``, answered by ``answer``."""

    relation: str
    subject: str
    answer: str

    @property
    def query(self) -> str:
        """The bare prompt: "The capital of Poland is"."""
        return RELATIONS[self.relation][0].format(self.subject)

    def stated(self, answer: str) -> str:
        """The template completed with ``answer``, as a sentence: "The capital of Poland is London."."""
        return f"{self.query} {answer}."


def answer_token(tokenizer: Any, answer: str) -> int | None:
    """The id of ``" " + answer`` when it is one token, else None."""
    ids = encode_ids(tokenizer, " " + answer)
    return ids[0] if len(ids) == 1 else None


def candidate_facts(tokenizer: Any, relations: Sequence[str] | None = None) -> list[Fact]:
    """Every fact of ``relations`` (default all, in ``RELATIONS`` order) whose answer is one token, and whose
    relation has at least one other one-token answer to serve as the counterfactual."""
    names = list(RELATIONS) if relations is None else list(relations)
    for name in names:
        if name not in RELATIONS:
            raise ConfigError("relations", name, "not a relation of the recall set", list(RELATIONS))
    out = []
    for name in names:
        pairs = RELATIONS[name][1]
        facts = [Fact(name, s, a) for s, a in pairs if answer_token(tokenizer, a) is not None]
        if len({f.answer for f in facts}) >= 2:
            out += facts
    return out


def counterfactuals(fact: Fact) -> list[str]:
    """The other answers of the fact's relation, sorted, without its own (its counterfactual candidates)."""
    return sorted({a for _, a in RELATIONS[fact.relation][1]} - {fact.answer})


@dataclass(frozen=True)
class RecallPrompts:
    """Context and bare prompts of a list of facts, each right-padded to its own width.

    ``context`` [N, T] the counterfactual statement and the query; ``bare`` [N, T'] the query alone; ``memory`` /
    ``counter``: [N] the ids of the true and the counterfactual answer; ``end`` / ``bare_end``: [N] the last token
    of each prompt; ``facts``, ``counter_answers``, ``texts`` (the context prompts) per row.
    """

    context: Tensor
    bare: Tensor
    memory: Tensor
    counter: Tensor
    end: Tensor
    bare_end: Tensor
    facts: tuple[Fact, ...]
    counter_answers: tuple[str, ...]
    texts: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.facts)

    def select(self, rows: Sequence[int]) -> RecallPrompts:
        """The prompts at ``rows``, in that order, each tensor cut to the longest of them."""
        index = torch.tensor(list(rows), dtype=torch.long)
        width, bare_width = int(self.end[index].max()) + 1, int(self.bare_end[index].max()) + 1
        return RecallPrompts(
            context=self.context[index, :width],
            bare=self.bare[index, :bare_width],
            memory=self.memory[index],
            counter=self.counter[index],
            end=self.end[index],
            bare_end=self.bare_end[index],
            facts=tuple(self.facts[i] for i in rows),
            counter_answers=tuple(self.counter_answers[i] for i in rows),
            texts=tuple(self.texts[i] for i in rows),
        )


def pad_rows(rows: Sequence[Sequence[int]], pad: int) -> Tensor:
    """Token lists right-padded with ``pad`` to the longest: [N, T]."""
    out = torch.full((len(rows), max(len(r) for r in rows)), pad, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(list(r), dtype=torch.long)
    return out


def bare_tokens(tokenizer: Any, facts: Sequence[Fact], bos: int | None = None, pad: int = 0) -> tuple[Tensor, Tensor]:
    """The bare queries of ``facts`` as (tokens [N, T], end [N])."""
    first = [] if bos is None else [bos]
    rows = [first + encode_ids(tokenizer, f.query) for f in facts]
    return pad_rows(rows, pad), torch.tensor([len(r) - 1 for r in rows])


def recall_prompts(
    tokenizer: Any,
    facts: Sequence[Fact],
    seed: int = 0,
    per_fact: int = 1,
    bos: int | None = None,
    pad: int = 0,
) -> RecallPrompts:
    """``per_fact`` context prompts per fact, each with a different counterfactual answer of its relation (drawn
    from ``random.Random(seed)`` among the one-token ones), in the order of ``facts``.

    ``bos``: a token put before every prompt; ``pad``: the id after a prompt's end.
    """
    if per_fact < 1:
        raise ConfigError("per_fact", per_fact, "must be at least 1")
    if not facts:
        raise ConfigError("facts", "[]", "needs at least one fact")
    if len(set(facts)) != len(facts):
        raise ConfigError("facts", len(facts), "a fact is listed twice")
    rng = random.Random(seed)
    first = [] if bos is None else [bos]
    rows, bare_rows, memory, counter, chosen, answers, texts = [], [], [], [], [], [], []
    for fact in facts:
        memory_id = answer_token(tokenizer, fact.answer)
        if memory_id is None:
            raise ConfigError("facts", fact.answer, "the answer is not one token for this tokenizer")
        pool = [a for a in counterfactuals(fact) if answer_token(tokenizer, a) is not None]
        if len(pool) < per_fact:
            raise ConfigError("per_fact", per_fact, f"{fact.relation} has {len(pool)} one-token counterfactuals")
        for answer in rng.sample(pool, per_fact):
            text = f"{fact.stated(answer)} {fact.query}"
            rows.append(first + encode_ids(tokenizer, text))
            bare_rows.append(first + encode_ids(tokenizer, fact.query))
            memory.append(memory_id)
            counter.append(answer_token(tokenizer, answer))
            chosen.append(fact)
            answers.append(answer)
            texts.append(text)
    return RecallPrompts(
        context=pad_rows(rows, pad),
        bare=pad_rows(bare_rows, pad),
        memory=torch.tensor(memory),
        counter=torch.tensor(counter),
        end=torch.tensor([len(r) - 1 for r in rows]),
        bare_end=torch.tensor([len(r) - 1 for r in bare_rows]),
        facts=tuple(chosen),
        counter_answers=tuple(answers),
        texts=tuple(texts),
    )


def split_facts(facts: Sequence[Fact], seed: int = 0) -> tuple[list[Fact], list[Fact]]:
    """The facts shuffled (``random.Random(seed)``) and cut in two halves, (selection, held-out), each half
    keeping every relation in proportion (a relation's facts alternate between the halves)."""
    rng = random.Random(seed)
    selection, held_out = [], []
    for name in dict.fromkeys(f.relation for f in facts):
        group = [f for f in facts if f.relation == name]
        rng.shuffle(group)
        selection += group[0::2]
        held_out += group[1::2]
    return selection, held_out
