"""``TrainConfig.z_loss``: 0 is the identity (same run, same id), and a positive weight adds z · mean(log² Z) to the
loss, checked against the gradient of that sum computed by hand."""

from __future__ import annotations

import pytest
import torch

from attnlab.errors import ConfigError
from attnlab.model.config import ModelConfig
from attnlab.model.transformer import TransformerLM
from attnlab.tasks.base import IGNORE, Batch
from attnlab.train import TrainConfig
from attnlab.train.loop import fit, log_z_squared, loss_and_accuracy

MODEL = ModelConfig(vocab_size=16, d_model=16, n_layers=1, n_heads=2, max_seq_len=8)
SHORT = dict(steps=3, batch_size=4, lr=1e-2, eval_every=3, eval_examples=4, warmup_frac=0.0, grad_clip=None)


def batch() -> Batch:
    g = torch.Generator().manual_seed(0)
    inputs = torch.randint(0, 16, (4, 8), generator=g)
    targets = torch.randint(0, 16, (4, 8), generator=g)
    targets[:, :3] = IGNORE  # unscored positions take no part in either term
    return Batch(inputs.long(), targets.long())


def trained(cfg: TrainConfig) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = TransformerLM(MODEL).double()
    data = batch()
    fit(model, lambda step, size: data, data, cfg)
    return model.state_dict()


def test_log_z_squared_by_hand() -> None:
    logits = torch.randn(2, 3, 5, dtype=torch.float64)
    targets = torch.tensor([[1, IGNORE, 2], [IGNORE, 0, 4]])
    scored = logits[targets != IGNORE]
    expected = torch.log(torch.exp(scored).sum(-1)).square().mean()
    torch.testing.assert_close(log_z_squared(logits, targets).double(), expected, rtol=1e-6, atol=0)  # float32 term


def test_z_loss_zero_is_the_identity_and_keeps_the_run_id() -> None:
    assert TrainConfig(z_loss=0.0).model_dump() == TrainConfig().model_dump()
    assert "z_loss" not in TrainConfig().model_dump() and TrainConfig(z_loss=1e-4).model_dump()["z_loss"] == 1e-4
    plain, zero = trained(TrainConfig(**SHORT)), trained(TrainConfig(**SHORT, z_loss=0.0))
    for name, value in plain.items():
        torch.testing.assert_close(zero[name], value, rtol=0, atol=0)


def test_a_positive_z_loss_adds_its_gradient() -> None:
    """AdamW's first update moves each parameter by −lr · g/(|g| + eps) (m̂ = g, √v̂ = |g|), so where |g| ≫ eps the
    loop's first step is −lr · sign(g): the sign of the gradient of CE + z · log² Z computed by hand, which differs
    from the sign of CE's alone on enough entries to show the term is there."""
    weight = 3.0
    torch.manual_seed(0)
    model = TransformerLM(MODEL).double()
    data = batch()
    logits = model(data.inputs)
    ce, _ = loss_and_accuracy(logits, data.targets)
    g_ce = torch.autograd.grad(ce, list(model.parameters()), retain_graph=True)
    g_all = torch.autograd.grad(ce + weight * log_z_squared(logits, data.targets), list(model.parameters()))
    start = [p.detach().clone() for p in model.parameters()]
    cfg = TrainConfig(**{**SHORT, "steps": 1, "eval_every": 1}, z_loss=weight, weight_decay=0.0)
    fit(model, lambda step, size: data, data, cfg)
    checked = flipped = 0
    for p, p0, g, g0 in zip(model.parameters(), start, g_all, g_ce, strict=True):
        big = g.abs() > 1e-4  # |g| ≥ 10⁴ eps: the update is lr · sign(g) to 1e-4 relative
        torch.testing.assert_close((p.detach() - p0)[big], -cfg.lr * g[big].sign(), rtol=2e-4, atol=0)
        checked += int(big.sum())
        flipped += int((big & (g.sign() != g0.sign()) & (g0.abs() > 1e-4)).sum())
    assert checked > 100 and flipped > 0


def test_a_negative_z_loss_is_one_line() -> None:
    with pytest.raises(ConfigError) as err:
        TrainConfig(z_loss=-1.0)
    assert "z_loss" in str(err.value) and "\n" not in str(err.value)
