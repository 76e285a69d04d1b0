"""Language modelling on real text: next-token prediction over a corpus built by ``attnlab data build``.

The corpus (:mod:`attnlab.data.corpora`; ``stdlib`` and ``pydoc_topics`` are built on first use) is split
once, in bytes: the held-out tail is everything after the first newline at or past 95 % of the file, the
training split everything before it (so both are whole lines). Each split is tokenized on its own:

* ``byte``: the UTF-8 bytes, vocabulary 256;
* ``bpe``: a byte-level BPE (Sennrich et al. 2016, arXiv:1508.07909, with GPT-2's byte-to-unicode
  pre-tokenizer, Radford et al. 2019) of ``bpe_vocab`` tokens, trained with the ``tokenizers`` library on
  the training split only (deterministic: same corpus and vocabulary → the same merges), cached as JSON
  beside the corpus and keyed by the corpus sha256 and the vocabulary size; the token ids of both splits
  are cached beside it (``.npz``), since encoding 12 MB takes tens of seconds on a busy 2-core machine;
  a lock file lets parallel sweep workers wait for one process to do it.

A training example is a window of ``length + 1`` consecutive tokens whose start is uniform over the training
split (drawn from the step's generator, so ``train_batch(step)`` is a pure function of seed and step); the
evaluation set is the held-out split's first ``eval_tokens`` tokens cut into contiguous windows that share
one token (window i is tokens ``i·L … i·L + L``), so every held-out token is predicted exactly once.
Inputs are ``window[:-1]``, targets ``window[1:]``, all scored: the loop's loss is nats per token, and

    bits per byte = loss / ln 2 · (scored tokens / their UTF-8 bytes)        (``bits_per_byte``)
    perplexity    = exp(loss), per token                                      (``perplexity``)

Bits per byte compares tokenizers (and models of other papers) on the same text; perplexity does not.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field, field_validator
from torch import Tensor

from attnlab.errors import ConfigError
from attnlab.tasks.base import TASKS, Batch, Task, TaskConfig

HELD_OUT_FRACTION = 0.05
CHUNK_CHARS = 1 << 16  # the BPE sees the text in chunks of whole lines of about this many characters
CACHE_FORMAT = 1  # bump when the split or the chunking changes: the cached token ids are then stale


class LMConfig(TaskConfig):
    name: Literal["lm"] = "lm"
    corpus: str = "stdlib"
    tokenizer: Literal["byte", "bpe"] = "byte"
    bpe_vocab: int = Field(4096, ge=257, le=1 << 20)  # BPE vocabulary: the 256 bytes plus the merges
    length: int = Field(128, gt=0)  # sequence length T (a window holds T + 1 tokens)
    eval_tokens: int = Field(65536, gt=0)  # held-out tokens evaluated (at most the held-out split)

    @field_validator("corpus")
    @classmethod
    def _known_corpus(cls, value: str) -> str:
        from attnlab.data.corpora import check_name

        return check_name(value)

    @property
    def vocab_size(self) -> int:
        """256 for bytes, ``bpe_vocab`` for BPE (a small corpus may leave the top ids unused)."""
        return 256 if self.tokenizer == "byte" else self.bpe_vocab

    @property
    def seq_len(self) -> int:
        return self.length

    def with_length(self, length: int) -> LMConfig:
        """The same task at another length (e.g. 2×, 4×, 8× for length extrapolation), validated."""
        return type(self)(**{**self.model_dump(), "length": length})

    def build(self, seed: int) -> LanguageModelling:
        return LanguageModelling(self, seed)


TASKS.register(
    "lm",
    summary="next-token prediction on a real-text corpus (bytes or BPE); loss in nats/token, bits per byte",
    paper="byte-level BPE: Sennrich et al. 2016, arXiv:1508.07909; Radford et al. 2019 (GPT-2)",
)(LMConfig)


@dataclass(frozen=True)
class TokenizedCorpus:
    """Both splits of a corpus as 1-D token tensors, and the UTF-8 length of every token id."""

    train: Tensor  # [N_train] uint8 (bytes) or int32 (BPE)
    held_out: Tensor  # [N_eval]
    token_bytes: Tensor  # [vocab] int64: bytes each token id stands for
    sha256: str  # of the corpus file
    tokenizer_path: Path | None  # the cached BPE, None for bytes


_LOADED: dict[tuple[Any, ...], TokenizedCorpus] = {}


def split_held_out(data: bytes, fraction: float = HELD_OUT_FRACTION) -> tuple[bytes, bytes]:
    """(train, held-out): the held-out tail starts after the first newline at or past ``1 − fraction`` of
    the bytes (before it, if there is none after); without any newline it starts at that byte."""
    at = int(len(data) * (1 - fraction))
    newline = data.find(b"\n", at)
    if newline == -1:
        newline = data.rfind(b"\n", 0, at)
    cut = newline + 1 if newline != -1 else at
    return data[:cut], data[cut:]


def line_chunks(text: str, size: int = CHUNK_CHARS) -> list[str]:
    """``text`` cut after the first newline at or past every ``size`` characters (concatenation = text)."""
    chunks, start = [], 0
    while start < len(text):
        end = text.find("\n", start + size)
        end = len(text) if end == -1 else end + 1
        chunks.append(text[start:end])
        start = end
    return chunks


def _bpe_library() -> Any:
    try:
        import tokenizers
    except ImportError:
        raise ConfigError(
            "tokenizer", "bpe", "needs the tokenizers package (pip install 'attnlab[lens]')", ["byte"]
        ) from None
    return tokenizers


def train_bpe(text: str, vocab: int) -> Any:
    """A byte-level BPE of at most ``vocab`` tokens trained on ``text`` (a ``tokenizers.Tokenizer``).

    No special tokens, no prefix space; every byte is in the initial alphabet, so any text round-trips.
    """
    tk = _bpe_library()
    tokenizer = tk.Tokenizer(tk.models.BPE())
    tokenizer.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = tk.decoders.ByteLevel()
    trainer = tk.trainers.BpeTrainer(
        vocab_size=vocab,
        initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
        show_progress=False,
    )
    chunks = line_chunks(text)
    tokenizer.train_from_iterator(chunks, trainer=trainer, length=len(chunks))
    return tokenizer


def encode(tokenizer: Any, text: str) -> np.ndarray:
    """Token ids [N] (int32) of ``text``, encoded in line chunks as the BPE was trained."""
    chunks = line_chunks(text)
    encodings = tokenizer.encode_batch(chunks, add_special_tokens=False)
    return np.fromiter((i for e in encodings for i in e.ids), dtype=np.int32)


def bpe_token_bytes(tokenizer: Any, vocab: int) -> Tensor:
    """Bytes per token id [vocab]: a byte-level token is a string of one character per byte."""
    out = torch.zeros(vocab, dtype=torch.long)
    for token, index in tokenizer.get_vocab().items():
        out[index] = len(token)
    return out


def _write_cache(path: Path, write: Any) -> None:
    """Write a cache file atomically; a read-only data folder only costs the cache (a warning)."""
    from attnlab.data.corpora import atomic_write_bytes

    buffer = io.BytesIO()
    write(buffer)
    try:
        atomic_write_bytes(path, buffer.getvalue())
    except OSError as err:
        warnings.warn(f"could not cache {path.name}: {err}", stacklevel=3)


@contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``lock_path``, so parallel sweep workers train and encode a BPE once; a
    folder where no lock file can be made runs unlocked (each process then does the work itself)."""
    try:
        handle = lock_path.open("a")
    except OSError:
        yield
        return
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _load_bpe(path: Path, train: bytes, held_out: bytes, sha: str, vocab: int, stem: str) -> TokenizedCorpus:
    tk = _bpe_library()
    tokenizer_path = path.parent / f"{stem}.tokenizer.json"
    ids_path = path.parent / f"{stem}.ids.npz"
    with _exclusive(path.parent / f"{stem}.lock"):
        if tokenizer_path.is_file():
            tokenizer = tk.Tokenizer.from_file(str(tokenizer_path))
        else:
            tokenizer = train_bpe(train.decode("utf-8", errors="replace"), vocab)
            _write_cache(tokenizer_path, lambda f: f.write(tokenizer.to_str().encode()))
        try:
            with np.load(ids_path, allow_pickle=False) as cached:
                train_ids, held_out_ids = cached["train"], cached["held_out"]
        except (OSError, KeyError, ValueError):
            train_ids = encode(tokenizer, train.decode("utf-8", errors="replace"))
            held_out_ids = encode(tokenizer, held_out.decode("utf-8", errors="replace"))
            _write_cache(ids_path, lambda f: np.savez(f, train=train_ids, held_out=held_out_ids))
    return TokenizedCorpus(
        torch.from_numpy(train_ids),
        torch.from_numpy(held_out_ids),
        bpe_token_bytes(tokenizer, vocab),
        sha,
        tokenizer_path,
    )


def load_tokens(config: LMConfig) -> TokenizedCorpus:
    """The tokenized splits of ``config.corpus``, built / trained / read from disk once per process.

    The in-process cache is keyed by the corpus file (path, size, mtime) and the tokenizer, so a sweep that
    builds the task for every run reads the corpus once.
    """
    from attnlab.data.corpora import ensure_corpus

    path = ensure_corpus(config.corpus).resolve()
    stat = path.stat()
    vocab = config.vocab_size
    key = (str(path), stat.st_size, stat.st_mtime_ns, config.tokenizer, vocab)
    if key in _LOADED:
        return _LOADED[key]
    data = path.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    train, held_out = split_held_out(data)
    if config.tokenizer == "byte":
        loaded = TokenizedCorpus(
            torch.frombuffer(bytearray(train), dtype=torch.uint8).clone(),
            torch.frombuffer(bytearray(held_out), dtype=torch.uint8).clone(),
            torch.ones(256, dtype=torch.long),
            sha,
            None,
        )
    else:
        stem = f"{config.corpus}.bpe{vocab}.{sha[:16]}.v{CACHE_FORMAT}"
        loaded = _load_bpe(path, train, held_out, sha, vocab, stem)
    _LOADED[key] = loaded
    return loaded


class LanguageModelling(Task):
    """A built ``lm`` task: training windows by step, contiguous held-out windows, bits per byte."""

    config: LMConfig

    def __init__(self, config: LMConfig, seed: int):
        super().__init__(config, seed)
        self.tokens = load_tokens(config)
        length = config.length
        n_train, n_held_out = self.tokens.train.numel(), self.tokens.held_out.numel()
        if n_train < length + 1:
            raise ConfigError(
                "length", length, f"corpus {config.corpus} has only {n_train} training tokens", f"1 … {n_train - 1}"
            )
        self.eval_windows = (min(config.eval_tokens, n_held_out - 1)) // length
        if self.eval_windows < 1:
            raise ConfigError(
                "length",
                length,
                f"the held-out split of {config.corpus} has {n_held_out} tokens, eval_tokens={config.eval_tokens}",
                f"1 … {max(1, min(config.eval_tokens, n_held_out - 1))}",
            )
        self._offsets = torch.arange(length + 1)

    def sample(self, n: int, generator: torch.Generator) -> Batch:
        """``n`` windows whose starts are uniform over the training split."""
        high = self.tokens.train.numel() - self.config.length  # starts 0 … N − L − 1: the window fits
        starts = torch.randint(0, high, (n, 1), generator=generator)
        windows = self.tokens.train[starts + self._offsets].long()  # [n, L + 1]
        return Batch(windows[:, :-1].contiguous(), windows[:, 1:].contiguous())

    def eval_batch(self, n: int) -> Batch:
        """The first ``min(n, eval_windows)`` contiguous held-out windows (the same for every seed)."""
        if n < 1:
            raise ConfigError("eval_batch.n", n, "needs at least one window", f"1 … {self.eval_windows}")
        k, length = min(n, self.eval_windows), self.config.length
        starts = (torch.arange(k) * length).unsqueeze(1)
        windows = self.tokens.held_out[starts + self._offsets].long()  # [k, L + 1]
        return Batch(windows[:, :-1].contiguous(), windows[:, 1:].contiguous())

    def eval_targets(self, n: int | None = None) -> Tensor:
        """The scored held-out tokens [k · L] of ``eval_batch(n)`` (all eval windows when ``n`` is None)."""
        k = self.eval_windows if n is None else min(max(n, 1), self.eval_windows)
        return self.tokens.held_out[1 : k * self.config.length + 1].long()

    def tokens_per_byte(self, n: int | None = None) -> float:
        """Scored tokens per UTF-8 byte they stand for, over ``eval_batch(n)`` (1.0 for bytes)."""
        targets = self.eval_targets(n)
        return targets.numel() / float(self.tokens.token_bytes[targets].sum())

    def bits_per_byte(self, loss: float, n: int | None = None) -> float:
        """Bits per byte from the loop's evaluation loss (nats/token) on ``eval_batch(n)``:
        ``loss / ln 2 · tokens / bytes``."""
        return loss / math.log(2) * self.tokens_per_byte(n)

    @staticmethod
    def perplexity(loss: float) -> float:
        """Per-token perplexity ``exp(loss)`` from a loss in nats/token."""
        return math.exp(loss)

    def decode(self, ids: Tensor | list[int]) -> str:
        """The text of token ids (bytes: UTF-8 with replacement; BPE: the trained tokenizer's decoder)."""
        values = [int(i) for i in (ids.tolist() if isinstance(ids, Tensor) else ids)]
        if self.tokens.tokenizer_path is None:
            return bytes(values).decode("utf-8", errors="replace")
        tokenizer = _bpe_library().Tokenizer.from_file(str(self.tokens.tokenizer_path))
        return tokenizer.decode(values, skip_special_tokens=False)
