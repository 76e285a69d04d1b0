"""PEAR on a tiny random TransformerLM: the proxy task's layout, the coefficients' gradient, frozen weights, and that
learned coefficients applied through ``scale_heads`` give the training-time model."""

from __future__ import annotations

import math

import pytest
import torch

from attnlab.errors import ConfigError
from attnlab.experiments.pear import PearCoefficients, linear_schedule, train_pear
from attnlab.lens.copy_task import CopyTask, copy_loss
from attnlab.lens.interventions import all_heads, scale_heads

TASK = CopyTask(n=6, low=3, high=31, bos=1)


def test_coefficient_gradient_matches_finite_differences(make_lm) -> None:
    model = make_lm(n_layers=2).double()
    tokens = TASK.batch(3, torch.Generator().manual_seed(2))
    coefs = PearCoefficients([(0, 1), (1, 3)]).double()
    with torch.no_grad():
        coefs.alpha.copy_(torch.tensor([0.7, 1.3], dtype=torch.float64))
    with coefs.applied(model):
        copy_loss(model(tokens), tokens, TASK).backward()

    def loss_at(a: list[float]) -> float:
        with torch.no_grad(), scale_heads(model, {(0, 1): a[0], (1, 3): a[1]}):
            return float(copy_loss(model(tokens), tokens, TASK))

    eps = 1e-6
    numeric = [(loss_at([0.7 + eps, 1.3]) - loss_at([0.7 - eps, 1.3])) / (2 * eps)]
    numeric.append((loss_at([0.7, 1.3 + eps]) - loss_at([0.7, 1.3 - eps])) / (2 * eps))
    torch.testing.assert_close(coefs.alpha.grad, torch.tensor(numeric, dtype=torch.float64), rtol=1e-5, atol=1e-8)
    assert coefs.alpha.grad.abs().min() > 0


def test_training_moves_only_the_coefficients(make_lm) -> None:
    model = make_lm(n_layers=2)
    model.blocks[1].ln1.weight.requires_grad_(False)  # a flag that must come back as it was
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    result = train_pear(model, all_heads(model), TASK, steps=6, batch=4, lr=5e-2, seed=0)
    assert len(result.losses) == 6 and all(math.isfinite(x) for x in result.losses)
    assert len(result.coefficients) == 8
    assert max(abs(a - 1.0) for a in result.coefficients.values()) > 1e-3  # they trained
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the model did not
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert all(p.grad is None for p in model.parameters())
    assert [h for h, _ in result.suppression_heads()] == sorted(
        (h for h, a in result.coefficients.items() if a < 1), key=lambda h: result.coefficients[h]
    )


def test_first_adam_step_moves_each_coefficient_by_lr_against_its_gradient(make_lm) -> None:
    model = make_lm(n_layers=2)
    heads = [(0, 0), (0, 3), (1, 1)]
    tokens = TASK.batch(4, torch.Generator().manual_seed(9))  # the batch train_pear draws first with seed 9
    coefs = PearCoefficients(heads)
    with coefs.applied(model):
        copy_loss(model(tokens), tokens, TASK).backward()
    result = train_pear(model, heads, TASK, steps=1, batch=4, lr=0.05, warmup=0, seed=9)
    expected = 1.0 - 0.05 * coefs.alpha.grad.sign()  # Adam's first update is lr · m̂/√v̂ = lr · sign(g)
    torch.testing.assert_close(torch.tensor([result.coefficients[h] for h in heads]), expected)


def test_learned_coefficients_applied_equal_scaling_hooks(make_lm) -> None:
    model = make_lm(n_layers=2)
    coefs = PearCoefficients([(0, 0), (1, 2), (1, 3)])
    with torch.no_grad():
        coefs.alpha.copy_(torch.tensor([0.25, 1.75, 0.0]))
    tokens = TASK.batch(2, torch.Generator().manual_seed(5))
    with torch.no_grad():
        with coefs.applied(model):
            trained_form = model(tokens)
        with scale_heads(model, coefs.values()):
            deployed = model(tokens)
        plain = model(tokens)
    assert torch.equal(trained_form, deployed)
    assert (deployed - plain).abs().max() > 1e-3


def test_sum_penalty_and_schedule_known_values() -> None:
    coefs = PearCoefficients([(0, 0), (0, 1), (1, 0)])
    with torch.no_grad():
        coefs.alpha.copy_(torch.tensor([1.5, 0.5, 2.0]))
    assert float(coefs.sum_penalty().detach()) == pytest.approx(0.0 + 1.0)  # layer 0: (2 − 2)², layer 1: (2 − 1)²
    assert [linear_schedule(s, 10, 2) for s in range(4)] == [0.5, 1.0, 1.0, 0.875]
    assert linear_schedule(9, 10, 2) == pytest.approx(0.125)
    with pytest.raises(ConfigError, match="twice"):
        PearCoefficients([(0, 0), (0, 0)])


def test_bad_training_arguments_are_config_errors(make_lm) -> None:
    model = make_lm(n_layers=2)
    for kwargs, field in (({"steps": 0}, "steps"), ({"lr": -1.0}, "lr"), ({"sum_penalty": -1.0}, "sum_penalty")):
        with pytest.raises(ConfigError, match=field):
            train_pear(model, [(0, 0)], TASK, **kwargs)
    with pytest.raises(ConfigError, match="no such layer"):
        train_pear(model, [(7, 0)], TASK, steps=1)
