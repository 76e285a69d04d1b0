"""Per-head scaling vectors and offsets on ``hook_z`` (``lens.interventions`` and ``lens.head_offsets``): zero
vectors are the identity, an edit touches only its heads, ``z' = (1 + A) ⊙ z + v`` exactly, gradients reach only
the vectors, and the L1 ranking reads ‖A_h‖₂.

Exactness: the edit is one multiply and one add per element; with a scale of exactly 1 and an offset of exactly 0
both are exact in floating point, so the identity is checked with ``torch.equal``, and the formula in float64 with
an absolute bound of a few ulps of the operands (|z|, |A|, |v| ≤ 10: 1e-13).
"""

from __future__ import annotations

import pytest
import torch

from attnlab.errors import ConfigError
from attnlab.hook_points import capture
from attnlab.lens.head_offsets import HeadOffsets
from attnlab.lens.interventions import edit_heads, head_dim, head_edit_hooks, offset_heads, scale_heads

TOKENS = torch.tensor([[1, 5, 9, 2, 7, 7, 3, 11, 4, 8]])
Z_NAMES = ["blocks.0.attn.hook_z", "blocks.1.attn.hook_z"]


def test_zero_vectors_are_the_identity(make_lm) -> None:
    model = make_lm(n_layers=2)
    heads = [(0, 1), (1, 0), (1, 3)]
    edits = HeadOffsets.for_model(model, heads, scale=True, offset=True)
    with torch.no_grad():
        plain = model(TOKENS)
        with edits.applied(model):
            edited = model(TOKENS)
        with offset_heads(model, {h: torch.zeros(8) for h in heads}):
            offset_only = model(TOKENS)
    assert torch.equal(plain, edited)
    assert torch.equal(plain, offset_only)


def test_an_edit_changes_only_its_heads(make_lm) -> None:
    model = make_lm(n_layers=2)
    heads = [(0, 2), (1, 1)]
    edits = HeadOffsets.for_model(model, heads, scale=True, offset=True, init_std=0.5,
                                  generator=torch.Generator().manual_seed(0))  # fmt: skip
    with torch.no_grad(), capture(model, Z_NAMES) as before, edits.applied(model), capture(model, Z_NAMES) as after:
        model(TOKENS)  # ``before`` is recorded ahead of the edit at each layer, ``after`` behind it
    for layer in range(2):
        z, z2 = before[f"blocks.{layer}.attn.hook_z"], after[f"blocks.{layer}.attn.hook_z"]
        for h in range(4):
            if (layer, h) in heads:
                assert (z2[:, h] - z[:, h]).abs().min() > 0
            else:
                assert torch.equal(z2[:, h], z[:, h])


def test_the_formula_scale_vector_then_offset(make_lm) -> None:
    model = make_lm(n_layers=2)
    z = torch.randn(2, 4, 5, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    a, v = z[0, 0, 0], z[1, 3, 1]  # two vectors of length 8 = d_head
    fns = head_edit_hooks(model, scale={(1, 1): 1.0 + a, (1, 3): 2.5}, offset={(1, 1): v})
    assert list(fns) == ["blocks.1.attn.hook_z"]
    out = fns["blocks.1.attn.hook_z"](z)  # the hook is a pure function of hook_z
    torch.testing.assert_close(out[:, 1], (1.0 + a) * z[:, 1] + v, rtol=0, atol=1e-13)
    torch.testing.assert_close(out[:, 3], 2.5 * z[:, 3], rtol=0, atol=1e-13)
    assert torch.equal(out[:, 0], z[:, 0]) and torch.equal(out[:, 2], z[:, 2])


def test_scale_and_offset_compose_on_a_model(make_lm) -> None:
    model = make_lm(n_layers=2).double()
    v = torch.linspace(-1, 1, 8, dtype=torch.float64)
    with torch.no_grad(), capture(model, Z_NAMES) as plain:
        model(TOKENS)
    layer0 = plain["blocks.0.attn.hook_z"]
    with torch.no_grad(), edit_heads(model, scale={(0, 1): 0.5}, offset={(0, 1): v}), capture(model, Z_NAMES) as both:
        model(TOKENS)
    torch.testing.assert_close(both["blocks.0.attn.hook_z"][:, 1], 0.5 * layer0[:, 1] + v, rtol=0, atol=1e-13)


def test_gradients_reach_only_the_vectors(make_lm) -> None:
    model = make_lm(n_layers=2)
    for p in model.parameters():
        p.requires_grad_(False)
    edits = HeadOffsets.for_model(model, [(0, 0), (1, 2)], scale=True, offset=True, init_std=1e-3,
                                  generator=torch.Generator().manual_seed(1))  # fmt: skip
    with edits.applied(model):
        model(TOKENS).logsumexp(-1).sum().backward()
    assert all(p.grad is None for p in model.parameters())
    assert edits.scale is not None and edits.offset is not None
    assert edits.scale.grad is not None and edits.scale.grad.abs().min() > 0
    assert edits.offset.grad is not None and edits.offset.grad.abs().min() > 0


def test_l1_norms_ranking_and_counts() -> None:
    edits = HeadOffsets([(0, 0), (0, 1), (1, 0)], 2, scale=True, offset=True)
    with torch.no_grad():
        edits.scale.copy_(torch.tensor([[3.0, 4.0], [0.0, 1.0], [-6.0, 8.0]]))
        edits.offset.copy_(torch.tensor([[1.0, -1.0], [0.0, 0.0], [0.5, 0.0]]))
    assert float(edits.l1().detach()) == pytest.approx(3 + 4 + 1 + 6 + 8 + 1 + 1 + 0.5)
    assert edits.scale_norms() == {(0, 0): 5.0, (0, 1): 1.0, (1, 0): 10.0}
    assert edits.top_heads(2) == [(1, 0), (0, 0)]
    assert edits.n_trained() == 12
    with pytest.raises(ConfigError, match="k=4"):
        edits.top_heads(4)


def test_bad_input_is_one_config_error(make_lm) -> None:
    model = make_lm(n_layers=2)
    assert head_dim(model, 1) == 8
    with pytest.raises(ConfigError, match="twice"):
        HeadOffsets([(0, 0), (0, 0)], 8)
    with pytest.raises(ConfigError, match="scale, offset"):
        HeadOffsets([(0, 0)], 8, scale=False, offset=False)
    with pytest.raises(ConfigError, match="no such head"):
        HeadOffsets.for_model(model, [(0, 9)])
    with pytest.raises(ConfigError, match="nothing to rank"):
        HeadOffsets([(0, 0)], 8).scale_norms()
    with (
        pytest.raises(ConfigError, match=r"needs \[8\]"),
        torch.no_grad(),
        offset_heads(model, {(0, 0): torch.ones(5)}),
    ):
        model(TOKENS)
    with pytest.raises(ConfigError, match="also zeroed"):
        head_edit_hooks(model, zero=[(0, 0)], offset={(0, 0): torch.ones(8)})
    with pytest.raises(ConfigError, match=r"needs \[8\]"), torch.no_grad(), scale_heads(model, {(1, 1): torch.ones(3)}):
        model(TOKENS)
