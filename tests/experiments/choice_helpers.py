"""A word-level tokenizer over the recall and multiple-choice prompt sets, and a tiny model over its vocabulary."""

from __future__ import annotations

import re
from collections.abc import Iterable

from attnlab.experiments.prompts.mcq import LETTERS, QUESTIONS
from attnlab.experiments.prompts.recall import RELATIONS
from attnlab.model.config import ModelConfig
from attnlab.model.transformer import TransformerLM

_PIECE = re.compile(r" ?[A-Za-z]+| ?\d+|\n|[^\sA-Za-z\d]")


class ChoiceTokenizer:
    """Words and numbers (with their leading space), newlines and punctuation are tokens; a word in ``spelled`` is
    spelled one character per token instead, so it is not a single-token answer."""

    def __init__(self, spelled: Iterable[str] = ()) -> None:
        self.spelled = set(spelled)
        texts = ["Question: Answer: + ?", *LETTERS, *QUESTIONS.values(), *map(str, range(25))]
        for template, pairs in RELATIONS.values():
            texts += [template.replace("{}", "")] + [f"{s} {a}" for s, a in pairs]
        pieces: set[str] = set()
        for text in texts:
            for piece in _PIECE.findall(text):
                pieces |= {piece, " " + piece.strip()}
        letters = [chr(c) for c in range(ord("a"), ord("z") + 1)] + [chr(c) for c in range(ord("A"), ord("Z") + 1)]
        pieces |= set(letters) | {" " + c for c in letters} | {"\n", ".", ":", "?"}
        self.vocab = {"<pad>": 0, "<bos>": 1} | {w: i + 2 for i, w in enumerate(sorted(pieces - {" "}))}

    def encode(self, text: str) -> list[int]:
        ids = []
        for piece in _PIECE.findall(text):
            if piece in self.vocab and piece.strip() not in self.spelled:
                ids.append(self.vocab[piece])
            else:  # spelled out: " W", "a", "r", ...
                head = 2 if piece.startswith(" ") else 1
                ids += [self.vocab[piece[:head]]] + [self.vocab[c] for c in piece[head:]]
        return ids


def tiny_choice_lm(vocab_size: int) -> TransformerLM:
    """Three layers of four heads, RMSNorm, room for the longest multiple-choice prompt."""
    cfg = ModelConfig(vocab_size=vocab_size, d_model=32, n_heads=4, n_layers=3, max_seq_len=64, norm="rmsnorm")
    return TransformerLM(cfg).eval()
