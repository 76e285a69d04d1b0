"""A word-level tokenizer stand-in for the IOI prompt set, and a tiny model over its vocabulary."""

from __future__ import annotations

import re

from attnlab.attention import AttentionConfig
from attnlab.experiments.prompts.ioi import OBJECTS, PLACES, TEMPLATES
from attnlab.model.config import ModelConfig
from attnlab.model.transformer import TransformerLM

KNOWN_NAMES = ("Mary", "John", "Alice", "Bob", "Anna", "Paul", "Kate", "Tom")
_WORD = re.compile(r" ?[A-Za-z]+|[^\sA-Za-z]")


class WordTokenizer:
    """Words (with their leading space) and punctuation are tokens; a word outside the vocabulary (a name not in
    ``KNOWN_NAMES``) is spelled one character per token, so only the known names are single tokens."""

    def __init__(self) -> None:
        words = {" " + n for n in KNOWN_NAMES}
        for text in (*TEMPLATES, *PLACES, *OBJECTS):
            for piece in _WORD.findall(re.sub(r"\{\w+\}", "", text)):
                words |= {piece, " " + piece.strip()}
        letters = [chr(c) for c in range(ord("a"), ord("z") + 1)] + [chr(c) for c in range(ord("A"), ord("Z") + 1)]
        words |= set(letters) | {" " + c for c in letters}
        self.vocab = {"<pad>": 0, "<bos>": 1} | {w: i + 2 for i, w in enumerate(sorted(words))}

    def encode(self, text: str) -> list[int]:
        ids = []
        for piece in _WORD.findall(text):
            if piece in self.vocab:
                ids.append(self.vocab[piece])
            else:  # spelled out: " B", "a", "r", ...
                ids += [self.vocab[piece[: 2 if piece.startswith(" ") else 1]]] + [
                    self.vocab[c] for c in piece[2 if piece.startswith(" ") else 1 :]
                ]
        return ids


def tiny_lm(vocab_size: int, n_layers: int = 3) -> TransformerLM:
    cfg = ModelConfig(
        vocab_size=vocab_size,
        d_model=32,
        n_heads=4,
        n_layers=n_layers,
        max_seq_len=32,
        norm="rmsnorm",
        attention=AttentionConfig(heads="gqa", heads_args={"n_kv_heads": 2}),
    )
    return TransformerLM(cfg).eval()
