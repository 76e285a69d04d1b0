"""Head interventions through ``hook_z``: zero / mean ablation and scaling, with known answers on tiny models."""

from __future__ import annotations

import pytest
import torch

from attnlab.errors import ConfigError
from attnlab.hook_points import capture, hooks
from attnlab.lens.interventions import (
    all_heads,
    check_heads,
    edit_heads,
    head_means,
    mean_ablate,
    model_heads,
    parse_heads,
    random_heads,
    scale_heads,
    z_hook_name,
    zero_ablate,
)

TOKENS = torch.randint(0, 31, (3, 10), generator=torch.Generator().manual_seed(1))


def test_zero_ablating_every_head_of_a_layer_removes_its_attention_output(make_lm) -> None:
    model = make_lm(n_layers=3)
    with torch.no_grad():
        base = model(TOKENS)
        with zero_ablate(model, [(1, h) for h in range(4)]):
            ablated = model(TOKENS)
        with hooks(model, {"blocks.1.hook_attn_out": torch.zeros_like}):
            removed = model(TOKENS)
    torch.testing.assert_close(ablated, removed, rtol=0, atol=1e-6)
    assert (ablated - base).abs().max() > 1e-2  # the layer mattered, so the equality is informative


def test_zero_ablating_one_head_equals_zeroing_its_output_projection_columns(make_lm) -> None:
    model = make_lm(n_layers=2)
    with torch.no_grad():
        with zero_ablate(model, [(0, 2)]):
            ablated = model(TOKENS)
        o_proj = model.blocks[0].attn.heads.o_proj
        d = o_proj.weight.shape[1] // 4
        o_proj.weight[:, 2 * d : 3 * d] = 0.0  # head 2's slice of the merged [B, T, H·d] input
        edited = model(TOKENS)
    torch.testing.assert_close(ablated, edited, rtol=0, atol=1e-5)


def test_scaling_by_one_is_the_identity_and_by_c_scales_only_that_head(make_lm) -> None:
    model = make_lm(n_layers=2)
    with torch.no_grad():
        with capture(model, [z_hook_name(1)]) as plain:
            base = model(TOKENS)
        with scale_heads(model, {h: 1.0 for h in all_heads(model)}):
            same = model(TOKENS)
        with scale_heads(model, {(1, 3): 2.5}), capture(model, [z_hook_name(1)]) as scaled:
            model(TOKENS)
    assert torch.equal(same, base)
    z0, z1 = plain[z_hook_name(1)], scaled[z_hook_name(1)]
    torch.testing.assert_close(z1[:, 3], 2.5 * z0[:, 3])
    assert torch.equal(z1[:, :3], z0[:, :3])


def test_mean_ablation_puts_the_recorded_mean_at_every_position(make_lm) -> None:
    model = make_lm(n_layers=2)
    reference = torch.randint(0, 31, (4, 10), generator=torch.Generator().manual_seed(7))
    means = head_means(model, reference, [(0, 1), (1, 0)], positions=slice(1, None))
    with torch.no_grad(), capture(model, [z_hook_name(0), z_hook_name(1)]) as ref_cache:
        model(reference)
    expected = ref_cache[z_hook_name(1)][:, 0, 1:].mean((0, 1))  # head 0 of layer 1, BOS position left out
    torch.testing.assert_close(means[(1, 0)], expected)
    with torch.no_grad(), mean_ablate(model, means), capture(model, [z_hook_name(0), z_hook_name(1)]) as cache:
        model(TOKENS)
    z = cache[z_hook_name(1)]
    assert torch.equal(z[:, 0], expected.expand_as(z[:, 0]))
    assert torch.equal(cache[z_hook_name(0)][:, 1], means[(0, 1)].expand_as(z[:, 0]))


def test_scale_coefficient_tensor_carries_a_gradient(make_lm) -> None:
    model = make_lm(n_layers=2)
    c = torch.tensor(1.0, requires_grad=True)
    with scale_heads(model, {(1, 2): c}):
        model(TOKENS).square().mean().backward()
    assert c.grad is not None and c.grad.abs() > 0


def test_gqa_and_encoder_models_index_query_heads(make_lm) -> None:
    gqa = make_lm(n_layers=2, heads="gqa", heads_args={"n_kv_heads": 2})
    assert model_heads(gqa) == {0: 4, 1: 4}
    with torch.no_grad(), zero_ablate(gqa, [(1, 3)]), capture(gqa, [z_hook_name(1)]) as cache:
        gqa(TOKENS)
    assert cache[z_hook_name(1)][:, 3].abs().max() == 0 and cache[z_hook_name(1)][:, 2].abs().max() > 0
    enc = make_lm(n_layers=2, mode="encoder", heads_args={"bias": True})
    with torch.no_grad(), zero_ablate(enc, [(0, h) for h in range(4)]), capture(enc, ["blocks.0.hook_attn_out"]) as c:
        enc(TOKENS)
    bias = enc.blocks[0].attn.heads.o_proj.bias  # with every head zeroed only the output bias remains
    torch.testing.assert_close(c["blocks.0.hook_attn_out"], bias.expand_as(c["blocks.0.hook_attn_out"]))


def test_parse_and_check_heads_reject_bad_input_in_one_line(make_lm) -> None:
    assert parse_heads("L18H6, l17h3 L0H0") == [(18, 6), (17, 3), (0, 0)]
    for bad, match in (("L18", "not a head"), ("L1H2,L1H2", "listed twice"), ("", "no heads")):
        with pytest.raises(ConfigError, match=match) as err:
            parse_heads(bad)
        assert "\n" not in str(err.value)
    model = make_lm(n_layers=2)
    with pytest.raises(ConfigError, match=r"L5H0.*no such layer.*0\.\.1"):
        check_heads(model, [(5, 0)])
    with pytest.raises(ConfigError, match=r"L1H4.*no such head.*0\.\.3"):
        check_heads(model, [(1, 4)])
    with pytest.raises(ConfigError, match="edited twice"), edit_heads(model, zero=[(0, 0)], scale={(0, 0): 2.0}):
        pass


def test_random_heads_are_seeded_distinct_and_avoid_the_excluded(make_lm) -> None:
    model = make_lm(n_layers=3)
    excluded = [(0, 0), (1, 1), (2, 2)]
    a, b = random_heads(model, 5, seed=3, exclude=excluded), random_heads(model, 5, seed=3, exclude=excluded)
    assert a == b and len(set(a)) == 5 and not set(a) & set(excluded)
    assert random_heads(model, 5, seed=4, exclude=excluded) != a
    with pytest.raises(ConfigError, match="between 0 and the 9"):
        random_heads(model, 10, seed=0, exclude=excluded)
