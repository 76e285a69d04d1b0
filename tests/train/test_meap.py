"""MEAP (``TrainConfig.meap_mask_fraction``): 0 is the identity (the same losses, the same run id), a fraction f masks
exactly round(f · T) input positions of each row with the reserved id (the task's vocab_size), the targets and the
source are untouched, and evaluation is never masked."""

from __future__ import annotations

import pytest
import torch

from attnlab.errors import ConfigError
from attnlab.model.config import ModelConfig
from attnlab.runner.config import RunConfig, Sweep
from attnlab.tasks.base import Task
from attnlab.tasks.mqar import MQARConfig
from attnlab.tasks.passkey import PasskeyConfig
from attnlab.tasks.reversal import ReversalConfig
from attnlab.train import TrainConfig
from attnlab.train.loop import TrainResult, evaluate, train
from attnlab.train.meap import mask_inputs, meap_batches, model_vocab

TASK = MQARConfig(vocab=16, length=16, num_kv_pairs=2)
SHORT = dict(steps=6, batch_size=8, lr=3e-3, eval_every=2, eval_examples=16)


def model_for(vocab: int) -> ModelConfig:
    return ModelConfig(vocab_size=vocab, d_model=16, n_layers=1, n_heads=2, max_seq_len=TASK.seq_len)


def run(cfg: TrainConfig, vocab: int = TASK.vocab_size + 1) -> TrainResult:
    return train(model_for(vocab), TASK, cfg, seed=0)


def test_zero_is_the_identity_and_keeps_the_run_id() -> None:
    assert TrainConfig(meap_mask_fraction=0.0).model_dump() == TrainConfig().model_dump()
    assert "meap_mask_fraction" not in TrainConfig().model_dump()
    assert TrainConfig(meap_mask_fraction=0.15).model_dump()["meap_mask_fraction"] == 0.15
    plain, zero = run(TrainConfig(**SHORT)), run(TrainConfig(**SHORT, meap_mask_fraction=0.0))
    losses = [torch.tensor([v for _, name, v in r.curves if name == "train_loss"]) for r in (plain, zero)]
    assert len(losses[0]) == 3 and torch.equal(losses[0], losses[1])
    assert plain.curves == zero.curves
    masked = run(TrainConfig(**SHORT, meap_mask_fraction=0.25))
    assert not torch.equal(losses[0], torch.tensor([v for _, name, v in masked.curves if name == "train_loss"]))
    task = TASK.build(0)
    assert meap_batches(task.train_batch, 0.0, TASK.vocab_size, 0) == task.train_batch


def test_evaluation_is_never_masked() -> None:
    cfg = TrainConfig(**SHORT, meap_mask_fraction=0.5)
    result = run(cfg)
    assert result.model is not None
    clean = evaluate(result.model, TASK.build(0).eval_batch(cfg.eval_examples), cfg)
    assert result.final["loss"] == clean["loss"] and result.final["accuracy"] == clean["accuracy"]


@pytest.mark.parametrize("task_cfg", [TASK, PasskeyConfig(length=40), ReversalConfig(vocab=10, length=9)])
@pytest.mark.parametrize("fraction", [0.1, 0.15, 0.5])
def test_the_fraction_is_honoured_and_targets_are_unchanged(task_cfg, fraction: float) -> None:
    task: Task = task_cfg.build(3)
    mask = task_cfg.vocab_size
    masked_batches = meap_batches(task.train_batch, fraction, mask, seed=3)
    for step in (1, 2):
        batch, masked = task.train_batch(step, 32), masked_batches(step, 32)
        hidden = masked.inputs == mask
        assert bool((batch.inputs != mask).all())  # the reserved id is no task token
        assert hidden.sum(dim=1).tolist() == [round(fraction * task_cfg.seq_len)] * 32
        assert torch.equal(masked.inputs[~hidden], batch.inputs[~hidden])
        assert torch.equal(masked.targets, batch.targets)
        assert (masked.source is None) == (batch.source is None)
        if batch.source is not None:  # an encoder-decoder: only the decoder's input is masked
            assert torch.equal(masked.source, batch.source)
        assert torch.equal(masked.inputs, masked_batches(step, 32).inputs)  # a function of (seed, step)
    rows = masked_batches(1, 32).inputs == mask
    assert not all(torch.equal(rows[0], r) for r in rows[1:])  # each row draws its own positions


def test_mask_inputs_is_drawn_from_the_generator() -> None:
    batch = TASK.build(0).train_batch(1, 4)
    first = mask_inputs(batch, 0.25, 99, torch.Generator().manual_seed(1)).inputs
    assert torch.equal(first, mask_inputs(batch, 0.25, 99, torch.Generator().manual_seed(1)).inputs)
    assert not torch.equal(first, mask_inputs(batch, 0.25, 99, torch.Generator().manual_seed(2)).inputs)


def test_bad_fractions_and_small_vocabularies_are_one_line() -> None:
    for bad in (-0.1, 1.0):
        with pytest.raises(ConfigError, match="meap_mask_fraction"):
            TrainConfig(meap_mask_fraction=bad)
    with pytest.raises(ConfigError, match=r"model\.vocab_size.*reserved id 16"):
        run(TrainConfig(**SHORT, meap_mask_fraction=0.1), vocab=TASK.vocab_size)
    with pytest.raises(ConfigError, match=r"model\.vocab_size.*reserved id 16"):
        RunConfig(model=model_for(16), task=TASK, train=TrainConfig(**SHORT, meap_mask_fraction=0.1))
    assert model_vocab(16, 0.0) == 16 and model_vocab(16, 0.1) == 17


def test_a_sweep_gives_the_model_the_mask_token() -> None:
    def sweep(train: TrainConfig) -> Sweep:
        mech = [{"normaliser": "softmax"}]
        fields = dict(tasks=[TASK.model_dump()], mechanisms=mech, widths=[16], lrs=[1e-3], seeds=[0])
        return Sweep(name="meap", model={"n_layers": 1, "n_heads": 2}, train=train, **fields)

    assert {r.model.vocab_size for r in sweep(TrainConfig(**SHORT, meap_mask_fraction=0.15)).runs()} == {17}
    assert {r.model.vocab_size for r in sweep(TrainConfig(**SHORT)).runs()} == {16}
