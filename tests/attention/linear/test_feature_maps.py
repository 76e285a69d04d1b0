"""Feature maps: what each one promises, and Hedgehog's distillation loss."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from attnlab.attention import AttentionSite
from attnlab.attention.linear.feature_maps import (
    FEATURE_MAPS,
    HedgehogFeatureMap,
    elu1,
    hedgehog_distillation_loss,
    performer,
    performer_projection,
)
from attnlab.attention.linear.hedgehog import Hedgehog, HedgehogParams


def test_the_registry_holds_the_five_maps() -> None:
    assert FEATURE_MAPS.names() == ["elu1", "hedgehog", "identity", "performer", "taylor"]


def test_elu1_is_elu_plus_one_and_strictly_positive() -> None:
    x = torch.linspace(-20, 5, 101, dtype=torch.float64)
    torch.testing.assert_close(elu1(x), F.elu(x) + 1)
    assert (elu1(x) > 0).all()


def test_hedgehog_features_are_a_softmax_of_z_and_one_of_minus_z_per_head() -> None:
    fmap = HedgehogFeatureMap(n_heads=2, d_head=4, d_feature=3).double()
    x = torch.randn(1, 2, 5, 4, dtype=torch.float64)
    feats = fmap(x)
    z = torch.einsum("bhtd,hdf->bhtf", x, fmap.weight) + fmap.bias[:, None]
    torch.testing.assert_close(feats, torch.cat([z.softmax(-1), (-z).softmax(-1)], dim=-1))


def test_hedgehog_identity_init_starts_from_softmax_of_x() -> None:
    fmap = HedgehogFeatureMap(n_heads=1, d_head=4, d_feature=4, init="identity").double()
    x = torch.randn(1, 1, 3, 4, dtype=torch.float64)
    torch.testing.assert_close(fmap(x)[..., :4], x.softmax(-1))


def test_performer_features_estimate_exp_of_q_dot_k() -> None:
    q, k = 0.5 * F.normalize(torch.randn(4, 8, dtype=torch.float64), dim=-1), torch.randn(4, 8, dtype=torch.float64)
    k = 0.5 * F.normalize(k, dim=-1)
    w = performer_projection(8192, 8, seed=0)
    estimate = performer(q, w) @ performer(k, w).T
    # A Monte Carlo estimate, not rounding: m iid positive features give a relative standard deviation of
    # √((exp(‖q + k‖²) − 1) / m) ≤ √((e − 1) / 8192) = 1.45% at ‖q‖ = ‖k‖ = 0.5 (orthogonal features: less), so 5% is
    # 3.4 σ on each of the 16 entries.
    torch.testing.assert_close(estimate, torch.exp(q @ k.T), rtol=0.05, atol=0)


def test_performer_projection_is_fixed_by_its_seed() -> None:
    assert torch.equal(performer_projection(16, 8, seed=3), performer_projection(16, 8, seed=3))
    assert not torch.equal(performer_projection(16, 8, seed=3), performer_projection(16, 8, seed=4))


def teacher_rows(t: int) -> torch.Tensor:
    scores = torch.randn(1, 1, t, t, dtype=torch.float64)
    return scores.masked_fill(~torch.ones(t, t, dtype=torch.bool).tril(), float("-inf")).softmax(-1)


def test_distillation_loss_is_the_teacher_entropy_when_the_student_copies_the_teacher() -> None:
    teacher = teacher_rows(5)
    # a_ij = φ(q_i)·φ(k_j) / Σ with φ(k_j) = e_j and φ(q_i) = t_i reproduces the teacher's rows exactly.
    q_feat, k_feat = teacher.clone(), torch.eye(5, dtype=torch.float64)[None, None]
    entropy = -(teacher * teacher.clamp(min=1e-300).log()).sum(-1).mean()
    torch.testing.assert_close(hedgehog_distillation_loss(teacher, q_feat, k_feat), entropy)


def test_distillation_loss_is_the_soft_cross_entropy_written_out() -> None:
    teacher = teacher_rows(4)
    q_feat, k_feat = torch.rand(1, 1, 4, 6, dtype=torch.float64), torch.rand(1, 1, 4, 6, dtype=torch.float64)
    total = 0.0
    for i in range(4):
        kernel = [(q_feat[0, 0, i] @ k_feat[0, 0, j]).item() for j in range(i + 1)]
        total -= sum(teacher[0, 0, i, j].item() * math.log(kernel[j] / sum(kernel)) for j in range(i + 1))
    assert hedgehog_distillation_loss(teacher, q_feat, k_feat).item() == pytest.approx(total / 4, rel=1e-12)


def test_training_the_hedgehog_maps_on_the_distillation_loss_lowers_it() -> None:
    hedgehog = Hedgehog(HedgehogParams(), AttentionSite(d_model=16, n_heads=2)).double()
    q, k = 2 * torch.randn(2, 2, 8, 8, dtype=torch.float64), 2 * torch.randn(2, 2, 8, 8, dtype=torch.float64)
    optimiser = torch.optim.Adam(hedgehog.parameters(), lr=0.05)
    before = hedgehog.distillation_loss(q, k).item()
    for _ in range(30):
        optimiser.zero_grad()
        hedgehog.distillation_loss(q, k).backward()
        optimiser.step()
    assert hedgehog.distillation_loss(q, k).item() < before - 0.05


def test_hedgehog_sets_its_aux_loss_only_when_training_with_a_distill_weight() -> None:
    site = AttentionSite(d_model=16, n_heads=2)
    q, k = torch.randn(1, 2, 5, 8), torch.randn(1, 2, 5, 8)
    weighted = Hedgehog(HedgehogParams(distill_weight=0.5), site)
    weighted.prepare(q, k, None)
    assert weighted.aux_loss is not None
    torch.testing.assert_close(weighted.aux_loss, 0.5 * weighted.distillation_loss(q, k))
    weighted.eval().prepare(q, k, None)
    assert weighted.aux_loss is None
    plain = Hedgehog(HedgehogParams(), site)
    plain.prepare(q, k, None)
    assert plain.aux_loss is None
