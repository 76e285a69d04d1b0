"""The training step's overhead fixes change no number: each optimised piece against a copy of the code it replaced
(kept here), compared bitwise.

The fixes (measured by ``bench/profile_train.py``): the training loss without the accuracy's argmax
(``token_loss``), AdamW as multi-tensor ``foreach`` calls (``make_optimizer``) instead of PyTorch's per-tensor loop on
CPU, and the dense reference skipping the masked copy of the scores when no hook reads ``hook_attn_scores``.
"""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from attnlab.attention import AttentionConfig
from attnlab.attention import build as attention_build
from attnlab.attention.core import attend_reference
from attnlab.attention.normalisers.sigmoid import Sigmoid
from attnlab.hook_points import capture
from attnlab.model.config import ModelConfig
from attnlab.model.transformer import TransformerLM
from attnlab.tasks import IGNORE
from attnlab.tasks.mqar import MQARConfig
from attnlab.train import TrainConfig, loop

TASK = MQARConfig(vocab=16, length=16, num_kv_pairs=2)


def model_config(normaliser: str) -> ModelConfig:
    return ModelConfig(
        vocab_size=16, d_model=16, n_layers=2, n_heads=2, max_seq_len=16, mlp=False,
        attention={"normaliser": normaliser, "position": "rope"},
    )  # fmt: skip


# --- copies of the replaced code --------------------------------------------------------------------------------


def old_loss_and_accuracy(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    flat_logits = logits.float().flatten(0, 1)
    flat_targets = targets.flatten()
    loss = F.cross_entropy(flat_logits, flat_targets, ignore_index=IGNORE)
    scored = flat_targets != IGNORE
    correct = (flat_logits.argmax(-1) == flat_targets) & scored
    return loss, correct.sum() / scored.sum().clamp(min=1)


def old_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    return torch.optim.AdamW(loop.param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas, fused=False)


def old_attend_reference(*args: Any, keep_scores: bool = True, **kwargs: Any) -> Any:
    return attend_reference(*args, **kwargs)


def old_steps(model_cfg: ModelConfig, cfg: TrainConfig, steps: int) -> tuple[list[float], list[torch.Tensor]]:
    """The old ``fit`` step, ``steps`` times: losses and the final parameters."""
    torch.manual_seed(0)
    model = TransformerLM(model_cfg)
    task = TASK.build(0)
    opt = old_optimizer(model, cfg)
    losses = []
    for step in range(1, steps + 1):
        for group in opt.param_groups:
            group["lr"] = loop.lr_at(step - 1, cfg)
        batch = task.train_batch(step, cfg.batch_size)
        loss, _ = old_loss_and_accuracy(model(batch.inputs), batch.targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        losses.append(loss.item())
    return losses, [p.detach().clone() for p in model.parameters()]


class _Stop(Exception):
    pass


# --- the tests --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_loss_and_accuracy_equal_the_old_computation_bitwise(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 9, 7, generator=g).round().to(dtype)  # rounded: ties in the argmax
    targets = torch.randint(0, 7, (4, 9), generator=g)
    targets[torch.rand(4, 9, generator=g) < 0.5] = IGNORE
    loss, accuracy = loop.loss_and_accuracy(logits, targets)
    old_loss, old_accuracy = old_loss_and_accuracy(logits, targets)
    assert torch.equal(loss, old_loss) and torch.equal(accuracy, old_accuracy)
    assert torch.equal(loop.token_loss(logits, targets), old_loss)


def test_the_foreach_optimiser_updates_bitwise_like_the_per_tensor_loop() -> None:
    cfg = TrainConfig(lr=3e-3, weight_decay=0.1)
    params = {}
    for make in (old_optimizer, loop.make_optimizer):
        torch.manual_seed(0)
        model = TransformerLM(model_config("softmax"))
        opt = make(model, cfg)
        for step in range(5):
            opt.zero_grad(set_to_none=True)
            model(
                torch.randint(0, 16, (3, 16), generator=torch.Generator().manual_seed(step))
            ).square().mean().backward()
            opt.step()
        params[make] = [p.detach().clone() for p in model.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(params[old_optimizer], params[loop.make_optimizer], strict=True))


def test_the_reference_without_scores_returns_the_same_output_and_weights() -> None:
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 3, 8, 4, generator=g) for _ in range(3))
    normaliser = Sigmoid(site=type("Site", (), {"seq_len": 8})())
    full = attend_reference(q, k, v, normaliser=normaliser)
    lean = attend_reference(q, k, v, normaliser=normaliser, keep_scores=False)
    assert lean.scores is None and full.scores is not None
    assert torch.equal(lean.out, full.out) and torch.equal(lean.weights, full.weights)


def test_a_hook_on_the_scores_still_reads_the_masked_scores() -> None:
    """The layer asks for the scores only when ``hook_attn_scores`` has a hook: then they are the old ones."""
    torch.manual_seed(0)
    model = TransformerLM(model_config("sigmoid"))
    tokens = torch.randint(0, 16, (2, 16), generator=torch.Generator().manual_seed(3))
    plain = model(tokens)
    with capture(model, ["blocks.0.attn.hook_attn_scores"]) as seen:
        hooked = model(tokens)
    assert torch.equal(plain, hooked)
    scores = seen["blocks.0.attn.hook_attn_scores"]
    hidden = ~torch.ones(16, 16, dtype=torch.bool).tril()
    assert torch.isneginf(scores[..., hidden]).all() and torch.isfinite(scores[..., ~hidden]).all()


@pytest.mark.parametrize("normaliser", ["softmax", "sigmoid"])
def test_fit_trains_bitwise_like_the_old_step(normaliser: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """``fit`` (every fix at once) against the old step with the old reference: the same losses and weights."""
    cfg = TrainConfig(steps=40, batch_size=8, lr=3e-3, eval_every=100)
    steps = 6
    with monkeypatch.context() as patch:
        patch.setattr(attention_build, "attend_reference", old_attend_reference)
        old_losses, old_params = old_steps(model_config(normaliser), cfg, steps)
    torch.manual_seed(0)
    model = TransformerLM(model_config(normaliser))
    task = TASK.build(0)
    losses: list[float] = []

    def on_step(step: int, loss: float) -> None:
        losses.append(loss)
        if step == steps:
            raise _Stop

    with contextlib.suppress(_Stop):
        loop.fit(model, task.train_batch, task.eval_batch(8), cfg, on_step=on_step)
    assert losses == old_losses
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), old_params, strict=True))


def test_attention_config_default_backend_is_untouched() -> None:
    """The fixes do not move any layer to another path: the demo's non-softmax layers stay on the reference."""
    layer = TransformerLM(model_config("sigmoid")).blocks[0].attn
    assert AttentionConfig().backend == "auto"
    assert layer.choose_path(t_q=16).path == "reference"
