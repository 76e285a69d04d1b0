"""The ``lm`` task on a real (small) corpus: splits, windows, tokenizers, bits per byte, and training on it."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from attnlab.errors import ConfigError
from attnlab.model.config import ModelConfig
from attnlab.model.transformer import TransformerLM
from attnlab.tasks import TASKS, task_from_dict
from attnlab.tasks import lm as lm_module
from attnlab.tasks.lm import LMConfig, line_chunks, split_held_out, train_bpe
from attnlab.train import TrainConfig, evaluate, train

LENGTH = 32
BYTES = LMConfig(corpus="pydoc_topics", length=LENGTH, eval_tokens=4096)
BPE = LMConfig(corpus="pydoc_topics", tokenizer="bpe", bpe_vocab=512, length=LENGTH, eval_tokens=4096)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh data folder for the module: pydoc_topics is built there on first use."""
    folder = tmp_path_factory.mktemp("corpora")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ATTNLAB_DATA", str(folder))
        yield folder


@pytest.fixture(scope="module")
def corpus(data: Path) -> bytes:
    BYTES.build(0)  # builds the corpus
    return (data / "pydoc_topics.txt").read_bytes()


def test_lm_is_registered() -> None:
    assert "lm" in TASKS.names() and isinstance(task_from_dict({"name": "lm"}), LMConfig)


def test_an_unbuilt_corpus_is_built_on_first_use(data: Path) -> None:
    BYTES.build(0)
    assert (data / "pydoc_topics.txt").is_file() and (data / "pydoc_topics.json").is_file()


def test_a_corpus_that_needs_a_download_asks_for_attnlab_data_build(data: Path) -> None:
    with pytest.raises(ConfigError, match="run `attnlab data build austen` first"):
        LMConfig(corpus="austen").build(0)


def test_the_held_out_split_is_the_tail_after_a_line_boundary(corpus: bytes) -> None:
    train_part, held_out = split_held_out(corpus)
    assert train_part + held_out == corpus and train_part.endswith(b"\n")
    assert 0.04 < len(held_out) / len(corpus) <= 0.05
    assert split_held_out(b"abcdefghij") == (b"abcdefghi", b"j")  # no newline: cut at the byte


def test_same_seed_same_batches_other_seed_other_batches(corpus: bytes) -> None:
    a, b, c = BYTES.build(3), BYTES.build(3), BYTES.build(4)
    assert torch.equal(a.train_batch(5, 16).inputs, b.train_batch(5, 16).inputs)
    assert not torch.equal(a.train_batch(5, 16).inputs, c.train_batch(5, 16).inputs)
    assert not torch.equal(a.train_batch(5, 16).inputs, a.train_batch(6, 16).inputs)
    assert torch.equal(a.eval_batch(8).inputs, c.eval_batch(8).inputs)  # one evaluation set for every seed


def test_targets_are_the_inputs_shifted_by_one(corpus: bytes) -> None:
    task = BYTES.build(0)
    for batch in (task.train_batch(1, 16), task.eval_batch(16)):
        assert batch.inputs.shape == batch.targets.shape == (16, LENGTH)
        assert torch.equal(batch.inputs[:, 1:], batch.targets[:, :-1])
        assert batch.targets.min() >= 0  # every position is scored


def test_training_windows_come_from_the_train_split_and_evaluation_is_the_contiguous_tail(corpus: bytes) -> None:
    train_part, held_out = split_held_out(corpus)
    task = BYTES.build(0)
    for step in range(20):
        batch = task.train_batch(step, 16)
        for inputs, targets in zip(batch.inputs, batch.targets, strict=True):
            window = bytes(inputs.tolist() + targets[-1:].tolist())
            assert window in train_part
    evaluation = task.eval_batch(10**6)
    assert evaluation.inputs.shape[0] == task.eval_windows == 4096 // LENGTH
    stream = bytes([int(evaluation.inputs[0, 0]), *evaluation.targets.flatten().tolist()])
    assert stream == held_out[: len(stream)]  # windows tile the held-out tail, each token scored once


def test_the_byte_tokenizer_round_trips(corpus: bytes) -> None:
    task = BYTES.build(0)
    train_part, held_out = split_held_out(corpus)
    assert bytes(task.tokens.train.tolist()) == train_part and bytes(task.tokens.held_out.tolist()) == held_out
    assert task.decode(task.tokens.held_out) == held_out.decode()
    assert task.bits_per_byte(math.log(2)) == pytest.approx(1.0) and task.tokens_per_byte() == 1.0


def test_bpe_trains_deterministically_on_the_train_split_and_round_trips(data: Path, corpus: bytes) -> None:
    task = BPE.build(0)
    train_part, held_out = split_held_out(corpus)
    assert task.decode(task.tokens.train) == train_part.decode()
    assert task.decode(task.tokens.held_out) == held_out.decode()
    ids = torch.cat([task.tokens.train, task.tokens.held_out])
    assert int(ids.max()) < BPE.vocab_size == 512 and task.tokens.train.numel() < len(train_part) / 2
    cached = task.tokens.tokenizer_path
    assert cached is not None and cached.parent == data and cached.is_file()
    assert train_bpe(train_part.decode(), 512).to_str() == cached.read_text()  # same merges when retrained
    lm_module._LOADED.clear()  # a new process: tokenizer and ids come from the cache files
    again = BPE.build(0)
    assert torch.equal(again.tokens.train, task.tokens.train) and torch.equal(
        again.tokens.held_out, task.tokens.held_out
    )


def test_bpe_bits_per_byte_uses_the_bytes_of_the_scored_tokens(corpus: bytes) -> None:
    task = BPE.build(0)
    _, held_out = split_held_out(corpus)
    assert int(task.tokens.token_bytes[task.tokens.held_out.long()].sum()) == len(held_out)
    targets = task.eval_targets()
    assert targets.numel() == task.eval_windows * LENGTH
    assert torch.equal(targets[:LENGTH], task.eval_batch(1).targets[0])
    nbytes = int(task.tokens.token_bytes[targets].sum())
    assert task.bits_per_byte(2.0) == pytest.approx(2.0 / math.log(2) * targets.numel() / nbytes)
    assert task.perplexity(2.0) == pytest.approx(math.exp(2.0))


def test_line_chunks_cover_the_text_at_line_ends() -> None:
    text = "ab\ncd\nef"
    assert line_chunks(text, 1) == ["ab\n", "cd\n", "ef"] and "".join(line_chunks(text, 4)) == text


def test_with_length_is_a_validated_copy(corpus: bytes) -> None:
    longer = BYTES.with_length(4 * LENGTH)
    assert longer.seq_len == 4 * LENGTH and longer.model_dump() == {**BYTES.model_dump(), "length": 4 * LENGTH}
    task = longer.build(0)
    assert task.eval_batch(100).inputs.shape == (4096 // (4 * LENGTH), 4 * LENGTH)
    with pytest.raises(ConfigError, match="length"):
        BYTES.with_length(0)
    with pytest.raises(ConfigError, match="training tokens"):
        BYTES.with_length(10**7).build(0)


def test_bad_settings_are_rejected_in_one_line() -> None:
    with pytest.raises(ConfigError, match=r"LMConfig.corpus='bible': unknown corpus \(allowed: austen"):
        LMConfig(corpus="bible")
    with pytest.raises(ConfigError, match="tokenizer"):
        LMConfig(tokenizer="wordpiece")
    with pytest.raises(ConfigError, match="bpe_vocab"):
        LMConfig(bpe_vocab=100)


def test_a_tiny_model_learns_the_corpus(corpus: bytes) -> None:
    model_cfg = ModelConfig(vocab_size=BYTES.vocab_size, d_model=32, n_layers=1, n_heads=2, max_seq_len=LENGTH)
    train_cfg = TrainConfig(steps=60, batch_size=16, lr=3e-3, eval_every=30, eval_examples=32, warmup_frac=0.1)
    torch.manual_seed(0)
    untrained = evaluate(TransformerLM(model_cfg), BYTES.build(0).eval_batch(32), train_cfg)["loss"]
    result = train(model_cfg, BYTES, train_cfg, seed=0)
    losses = [value for _, name, value in result.curves if name == "eval_loss"]
    assert losses[-1] < losses[0] < untrained
    assert losses[-1] < 0.75 * untrained
