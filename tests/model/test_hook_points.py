"""Hook points carry TransformerLens names, capture activations, and can replace them."""

from __future__ import annotations

import pytest
import torch

from attnlab.attention import causal_mask
from attnlab.hook_points import capture, hook_points, hooks

ATTN_HOOKS = ["hook_q", "hook_k", "hook_v", "hook_rot_q", "hook_rot_k", "hook_attn_scores", "hook_pattern", "hook_z"]
BLOCK_HOOKS = ["hook_resid_pre", "hook_attn_out", "hook_resid_mid", "hook_mlp_out", "hook_resid_post"]


def test_model_exposes_the_transformerlens_hook_names(make_lm) -> None:
    names = set(hook_points(make_lm(n_layers=2)))
    for layer in range(2):
        for hook in ATTN_HOOKS:
            assert f"blocks.{layer}.attn.{hook}" in names
        for hook in BLOCK_HOOKS:
            assert f"blocks.{layer}.{hook}" in names


@pytest.mark.parametrize(
    ("hook", "shape"),
    [
        ("blocks.1.attn.hook_pattern", (2, 4, 7, 7)),
        ("blocks.1.attn.hook_attn_scores", (2, 4, 7, 7)),
        ("blocks.1.attn.hook_q", (2, 4, 7, 8)),
        ("blocks.1.attn.hook_z", (2, 4, 7, 8)),
        ("blocks.1.hook_resid_post", (2, 7, 32)),
    ],
)
def test_captured_activation_shapes(make_lm, hook: str, shape: tuple[int, ...]) -> None:
    model = make_lm()
    with capture(model, [hook]) as cache:
        model(torch.randint(0, 31, (2, 7)))
    assert cache[hook].shape == shape


def test_captured_pattern_is_the_normalised_scores(make_lm) -> None:
    model = make_lm(normaliser="softmax", position="nope")
    with capture(model, ["blocks.0.attn.hook_attn_scores", "blocks.0.attn.hook_pattern"]) as cache:
        model(torch.randint(0, 31, (2, 7)))
    scores = cache["blocks.0.attn.hook_attn_scores"]
    assert torch.isneginf(scores[..., ~causal_mask(7, 7)]).all()  # future keys are shown as −inf
    torch.testing.assert_close(cache["blocks.0.attn.hook_pattern"], scores.softmax(-1))


def test_zeroing_hook_z_changes_the_logits(make_lm) -> None:
    model = make_lm()
    tokens = torch.randint(0, 31, (2, 7))
    plain = model(tokens)
    with hooks(model, {"blocks.0.attn.hook_z": torch.zeros_like}):
        ablated = model(tokens)
    assert not torch.allclose(ablated, plain, atol=1e-3)


def test_capturing_an_unknown_hook_name_is_an_error(make_lm) -> None:
    model = make_lm()
    unknown = pytest.raises(KeyError, match=r"unknown hook point\(s\) \['blocks.0.hook_pattern'\]")
    with unknown, capture(model, ["blocks.0.hook_pattern"]):
        pass
