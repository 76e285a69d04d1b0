"""A short training run makes progress on the non-causal task (sorting, encoder) and on the cross-attention task
(reversal, encoder-decoder): the loop feeds each model what it needs (``source`` for the encoder-decoder)."""

from __future__ import annotations

import torch

from attnlab.model.config import ModelConfig
from attnlab.model.encdec import build_model
from attnlab.tasks.reversal import ReversalConfig
from attnlab.tasks.sorting import SortingConfig
from attnlab.train import TrainConfig, evaluate, train

CFG = TrainConfig(steps=150, batch_size=32, lr=3e-3, eval_every=75, eval_examples=256)


def small(mode: str, length: int, position: str) -> ModelConfig:
    return ModelConfig(
        vocab_size=16,
        d_model=32,
        n_layers=1,
        n_heads=2,
        mode=mode,
        max_seq_len=length,
        attention={"position": position},
    )


def test_an_encoder_learns_to_sort() -> None:
    task, model_cfg = SortingConfig(vocab=16, length=8), small("encoder", 8, "rope")
    torch.manual_seed(0)  # the initialisation `train` starts from with seed 0
    before = evaluate(build_model(model_cfg), task.build(seed=0).eval_batch(256), CFG)["loss"]
    after = train(model_cfg, task, CFG, seed=0).final["loss"]
    assert after < before - 0.4


def test_an_encoder_decoder_learns_to_reverse() -> None:
    task = ReversalConfig(vocab=16, length=6)  # chance accuracy 1/15
    final = train(small("encoder_decoder", 6, "learned"), task, CFG, seed=0).final
    assert final["accuracy"] > 0.5
