"""Indirect object identification (IOI) prompts: ABBA and BABA orders, single-token names, ABC and S2-flip.

Wang et al. 2023, "Interpretability in the Wild: a Circuit for Indirect Object Identification in GPT-2 small"
(arXiv:2211.00593). A prompt names two people, then repeats one of them (the subject S) and ends where the other
(the indirect object IO) is the answer: "When Mary and John went to the store, John gave a drink to" → " Mary".
The templates, places and objects are the paper's (``redwoodresearch/Easy-Transformer``,
``easy_transformer/ioi_dataset.py``: ``BABA_TEMPLATES``; ABBA swaps the first two names). Each template has three
name slots: the two names of the first clause (slot 0, slot 1) and the repeated subject S2 (slot 2); in ABBA
order slot 0 is the IO, in BABA order slot 1 is.

Names are kept when ``" " + name`` is one token for the given tokenizer, so every name occupies one position and
a corruption that swaps names keeps every position where it was. The corruptions (the corrupted prompt of each
clean one, same template, place and object, same token count):

- ``abc``: the three slots get three other names, distinct from each other and from the clean IO and S (the
  paper's ABC distribution: no name is repeated, so nothing says which one is the answer);
- ``s2_flip``: S2 becomes the IO, so the other name is now the indirect object and the correct answer flips (the
  symmetric corruption of TransformerLens's ``demos/Exploratory_Analysis_Demo.ipynb``).

Orders alternate (ABBA, BABA, ABBA, ...), so a set of an even size has as many of each. Everything is drawn from
``random.Random(seed)``: the same seed and tokenizer give the same prompts.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from attnlab.errors import ConfigError

# {0}, {1}: the first clause's names; {2}: the repeated subject S2; the prompt ends before the answer
TEMPLATES = (
    "Then, {0} and {1} went to the {place}. {2} gave a {object} to",
    "Then, {0} and {1} had a lot of fun at the {place}. {2} gave a {object} to",
    "Then, {0} and {1} were working at the {place}. {2} decided to give a {object} to",
    "Then, {0} and {1} were thinking about going to the {place}. {2} wanted to give a {object} to",
    "Then, {0} and {1} had a long argument, and afterwards {2} said to",
    "After {0} and {1} went to the {place}, {2} gave a {object} to",
    "When {0} and {1} got a {object} at the {place}, {2} decided to give it to",
    "When {0} and {1} got a {object} at the {place}, {2} decided to give the {object} to",
    "While {0} and {1} were working at the {place}, {2} gave a {object} to",
    "While {0} and {1} were commuting to the {place}, {2} gave a {object} to",
    "After the lunch, {0} and {1} went to the {place}. {2} gave a {object} to",
    "Afterwards, {0} and {1} went to the {place}. {2} gave a {object} to",
    "Then, {0} and {1} had a long argument. Afterwards {2} said to",
    "The {place} {0} and {1} went to had a {object}. {2} gave it to",
    "Friends {0} and {1} found a {object} at the {place}. {2} gave it to",
)
PLACES = ("store", "garden", "restaurant", "school", "hospital", "office", "house", "station")
OBJECTS = ("ring", "kiss", "bone", "basketball", "computer", "necklace", "drink", "snack")
# common English first names; those that are not one token (with a leading space) are dropped per tokenizer
NAMES = (
    "Mary", "John", "Alice", "Bob", "James", "Michael", "David", "Sarah", "Emma", "Daniel", "Paul", "Mark",
    "Anna", "Laura", "Kevin", "Brian", "Jason", "Eric", "Steven", "Thomas", "Peter", "George", "Richard", "Joseph",
    "Charles", "Robert", "William", "Jennifer", "Lisa", "Susan", "Karen", "Nancy", "Linda", "Jessica", "Amy",
    "Rachel", "Kate", "Helen", "Emily", "Grace", "Lucy", "Alex", "Adam", "Andrew", "Anthony", "Ryan", "Matt",
    "Frank", "Jack", "Henry", "Sam", "Tom", "Tim", "Joe", "Ben", "Dan", "Max", "Jane", "Julia", "Rose", "Amanda",
    "Chris", "Scott", "Justin", "Kyle", "Sean", "Patrick", "Jeff", "Greg", "Carl", "Martin", "Victoria", "Edward",
    "Arthur", "Harry", "Oliver", "Charlie", "Leo", "Lily", "Sophie", "Hannah", "Claire", "Diana", "Maria", "Elena",
    "Frederick", "Bernard", "Gustav", "Ingrid", "Magnus",
)  # fmt: skip
CORRUPTIONS = ("abc", "s2_flip")
ORDERS = ("ABBA", "BABA")


def encode_ids(tokenizer: Any, text: str) -> list[int]:
    """``tokenizer.encode(text)`` as a list of ids (a ``tokenizers.Encoding``'s ``.ids``, or the list itself)."""
    encoded = tokenizer.encode(text)
    return [int(i) for i in getattr(encoded, "ids", encoded)]


def single_token_names(tokenizer: Any, names: Sequence[str] = NAMES) -> list[str]:
    """The names whose ``" " + name`` is one token, in the given order."""
    return [name for name in names if len(encode_ids(tokenizer, " " + name)) == 1]


@dataclass(frozen=True)
class IOIPrompts:
    """Clean and corrupted IOI prompts, right-padded to one length; positions are shared by both runs.

    ``clean`` / ``corrupted``: [N, T] token ids (``pad`` after each prompt's last token); ``io`` / ``s``: [N] the
    ids of the clean prompt's indirect object and subject (the correct and the wrong answer); ``io_pos``,
    ``s1_pos``, ``s2_pos``: [N] where the IO, the first S and the repeated S stand; ``end``: [N] the last token
    (where the answer is predicted); ``orders``: "ABBA" or "BABA" per prompt; ``templates``: the index into
    ``TEMPLATES``; ``texts`` / ``corrupted_texts``: the prompts as text.
    """

    clean: Tensor
    corrupted: Tensor
    io: Tensor
    s: Tensor
    io_pos: Tensor
    s1_pos: Tensor
    s2_pos: Tensor
    end: Tensor
    orders: tuple[str, ...]
    templates: tuple[int, ...]
    texts: tuple[str, ...]
    corrupted_texts: tuple[str, ...]
    corruption: str

    def __len__(self) -> int:
        return len(self.texts)

    def select(self, rows: Sequence[int]) -> IOIPrompts:
        """The prompts at ``rows``, in that order, their tokens cut to the longest of them."""
        index = torch.tensor(list(rows), dtype=torch.long)
        width = int(self.end[index].max()) + 1

        def pick(values: tuple) -> tuple:
            return tuple(values[i] for i in rows)

        return IOIPrompts(
            clean=self.clean[index, :width],
            corrupted=self.corrupted[index, :width],
            io=self.io[index],
            s=self.s[index],
            io_pos=self.io_pos[index],
            s1_pos=self.s1_pos[index],
            s2_pos=self.s2_pos[index],
            end=self.end[index],
            orders=pick(self.orders),
            templates=pick(self.templates),
            texts=pick(self.texts),
            corrupted_texts=pick(self.corrupted_texts),
            corruption=self.corruption,
        )


def _render(
    tokenizer: Any, template: str, names: Sequence[str], place: str, obj: str
) -> tuple[str, list[int], list[int]]:
    """The prompt's text, its ids and the positions of its three name slots.

    Built piece by piece (the text between slots, then each name's own token) and checked against the
    tokenizer's reading of the whole text, so the positions are those the model sees.
    """
    filled = template.replace("{place}", place).replace("{object}", obj)
    ids: list[int] = []
    slots: list[int] = []
    rest = filled
    for slot, name in enumerate(names):
        before, rest = rest.split("{" + str(slot) + "}", 1)
        if before.endswith(" "):
            before, spaced = before[:-1], " " + name
        else:  # a template that starts with a name (none of the paper's do) would need the unspaced token
            raise ConfigError("template", template, "every name slot must follow a space")
        ids += encode_ids(tokenizer, before) if before else []
        slots.append(len(ids))
        ids += encode_ids(tokenizer, spaced)
    ids += encode_ids(tokenizer, rest) if rest else []
    text = filled.format(*names)
    whole = encode_ids(tokenizer, text)
    if whole != ids:
        raise ConfigError("tokenizer", type(tokenizer).__name__, f"splits the names of {text!r} across tokens")
    return text, ids, slots


def check_request(n: int, corruption: str) -> None:
    """ConfigError unless ``n`` is even and at least 2 and ``corruption`` is one of ``CORRUPTIONS``."""
    if n < 2 or n % 2:
        raise ConfigError("n_prompts", n, "must be even and at least 2 (half ABBA, half BABA)")
    if corruption not in CORRUPTIONS:
        raise ConfigError("corruption", corruption, "not an IOI corruption", CORRUPTIONS)


def ioi_prompts(
    tokenizer: Any,
    n: int,
    seed: int = 0,
    corruption: str = "abc",
    bos: int | None = None,
    pad: int = 0,
    names: Sequence[str] = NAMES,
) -> IOIPrompts:
    """``n`` IOI prompts (``n`` even: half ABBA, half BABA) and their corruption (``"abc"`` or ``"s2_flip"``).

    ``bos``: a token put before every prompt (positions count it); ``pad``: the id after a prompt's end (never read
    by a causal model at or before ``end``); ``names``: the candidates, filtered to single tokens.
    """
    check_request(n, corruption)
    pool = single_token_names(tokenizer, names)
    if len(pool) < 5:  # IO, S and three other names for ABC
        raise ConfigError("names", len(pool), "fewer than 5 names are single tokens for this tokenizer")
    rng = random.Random(seed)
    first = [] if bos is None else [bos]
    rows: list[tuple[list[int], list[int]]] = []
    meta: dict[str, list] = {k: [] for k in ("io", "s", "slots", "orders", "templates", "texts", "corrupted")}
    for i in range(n):
        order = ORDERS[i % 2]
        template = rng.randrange(len(TEMPLATES))
        place, obj = rng.choice(PLACES), rng.choice(OBJECTS)
        io, s, *others = rng.sample(pool, 5)
        clean_names = (io, s, s) if order == "ABBA" else (s, io, s)
        bad_names = tuple(others) if corruption == "abc" else (*clean_names[:2], io)
        text, ids, slots = _render(tokenizer, TEMPLATES[template], clean_names, place, obj)
        bad_text, bad_ids, bad_slots = _render(tokenizer, TEMPLATES[template], bad_names, place, obj)
        if bad_slots != slots or len(bad_ids) != len(ids):  # names are single tokens: cannot happen
            raise AssertionError(f"{bad_text!r} does not align with {text!r}")
        rows.append((first + ids, first + bad_ids))
        meta["io"].append(encode_ids(tokenizer, " " + io)[0])
        meta["s"].append(encode_ids(tokenizer, " " + s)[0])
        meta["slots"].append([p + len(first) for p in slots])
        meta["orders"].append(order)
        meta["templates"].append(template)
        meta["texts"].append(text)
        meta["corrupted"].append(bad_text)
    width = max(len(ids) for ids, _ in rows)
    clean = torch.full((n, width), pad, dtype=torch.long)
    corrupted = clean.clone()
    for row, (ids, bad_ids) in enumerate(rows):
        clean[row, : len(ids)] = torch.tensor(ids)
        corrupted[row, : len(bad_ids)] = torch.tensor(bad_ids)
    slots = torch.tensor(meta["slots"])  # [n, 3]
    abba = torch.tensor([order == "ABBA" for order in meta["orders"]])
    return IOIPrompts(
        clean=clean,
        corrupted=corrupted,
        io=torch.tensor(meta["io"]),
        s=torch.tensor(meta["s"]),
        io_pos=torch.where(abba, slots[:, 0], slots[:, 1]),
        s1_pos=torch.where(abba, slots[:, 1], slots[:, 0]),
        s2_pos=slots[:, 2],
        end=torch.tensor([len(ids) - 1 for ids, _ in rows]),
        orders=tuple(meta["orders"]),
        templates=tuple(meta["templates"]),
        texts=tuple(meta["texts"]),
        corrupted_texts=tuple(meta["corrupted"]),
        corruption=corruption,
    )
