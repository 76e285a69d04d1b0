"""Real text for the experiments, always available offline: CPython's documentation topics.

``pydoc_data.topics.topics`` ships with the standard library (``Lib/pydoc_data/topics.py`` in the CPython
repository, generated from the reference manual): ~465k characters of English prose with code, joined here in sorted
key order. Token ids come from the model's own ``tokenizers.Tokenizer``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from attnlab.errors import ConfigError


def reference_text(n_chars: int | None = None, offset: int = 0) -> str:
    """The Python reference manual's topic texts (``pydoc_data.topics.topics``), joined in key order;
    ``[offset : offset + n_chars]`` of it (all of it from ``offset`` when ``n_chars`` is None)."""
    from pydoc_data.topics import topics

    text = "\n\n".join(topics[key] for key in sorted(topics))
    return text[offset:] if n_chars is None else text[offset : offset + n_chars]


def text_tokens(tokenizer: Any, n_tokens: int, offset: int = 0) -> Tensor:
    """The first ``n_tokens`` tokens of ``reference_text()[offset:]`` as [1, n_tokens] (a ``tokenizers.Tokenizer``)."""
    if n_tokens < 2:
        raise ConfigError("n_tokens", n_tokens, "must be at least 2")
    ids = tokenizer.encode(reference_text(n_tokens * 8, offset)).ids[:n_tokens]
    if len(ids) < n_tokens:
        raise ConfigError("n_tokens", n_tokens, f"the reference text has only {len(ids)} tokens from offset {offset}")
    return torch.tensor([ids])


def text_chunks(tokenizer: Any, seq_len: int, n_chunks: int, *, from_end: bool = False, bos: int | None = 1) -> Tensor:
    """``n_chunks`` consecutive, non-overlapping chunks of ``reference_text()`` as ids [n_chunks, seq_len].

    Each chunk is ``[bos] +`` ``seq_len − 1`` text tokens (``seq_len`` text tokens without ``bos``). Chunks come from
    the start of the text, or with ``from_end`` from its end, so a calibration set and a held-out set taken from
    the two ends do not overlap.
    """
    width = seq_len - (0 if bos is None else 1)
    if width < 2 or n_chunks < 1:
        raise ConfigError("seq_len / chunks", f"{seq_len} / {n_chunks}", "need seq_len >= 3 and chunks >= 1")
    ids = tokenizer.encode(reference_text()).ids
    if n_chunks * width > len(ids):
        raise ConfigError("chunks", n_chunks, f"the text has only {len(ids) // width} chunks of {width} tokens")
    start = len(ids) - n_chunks * width if from_end else 0
    body = torch.tensor(ids[start : start + n_chunks * width]).view(n_chunks, width)
    if bos is None:
        return body
    return torch.cat([torch.full((n_chunks, 1), bos), body], dim=1)
