"""MLA (latent KV + decoupled RoPE key) and CLLA (the latent shared across layers, optionally quantised)."""

from __future__ import annotations

import pytest
import torch

from attnlab.attention import AttentionConfig, AttentionSite, build_attention
from attnlab.attention.heads.mla import fake_quantise
from attnlab.errors import ConfigError
from attnlab.model.hooks import capture

SITE = AttentionSite(d_model=16, n_heads=4)  # d_head = 4
PLAIN = {"rope_dim": 0, "latent_norm": False}  # no decoupled RoPE, no RMSNorm: MLA is a factored MHA


def mla_module(**args) -> torch.nn.Module:
    return build_attention(AttentionConfig(heads="mla", heads_args=args, position="rope"), SITE).double()


def mha_module() -> torch.nn.Module:
    return build_attention(AttentionConfig(heads="mha", position="nope"), SITE).double()


def test_identity_up_projections_make_mla_mha_with_shared_key_and_value_weights() -> None:
    mla, mha = mla_module(kv_rank=16, **PLAIN), mha_module()
    eye = torch.eye(16, dtype=torch.float64)
    with torch.no_grad():
        mla.heads.k_up.weight.copy_(eye)
        mla.heads.v_up.weight.copy_(eye)
        mha.heads.q_proj.weight.copy_(mla.heads.q_proj.weight)
        mha.heads.k_proj.weight.copy_(mla.heads.kv_down.weight)  # k = v = c = W_DKV x
        mha.heads.v_proj.weight.copy_(mla.heads.kv_down.weight)
        mha.heads.o_proj.weight.copy_(mla.heads.o_proj.weight)
    x = torch.randn(2, 6, 16, dtype=torch.float64)
    torch.testing.assert_close(mla(x), mha(x), atol=1e-12, rtol=0)


def test_low_rank_mla_is_mha_with_the_products_of_its_factors() -> None:
    mla, mha = mla_module(kv_rank=6, q_rank=5, **PLAIN), mha_module()
    h = mla.heads
    with torch.no_grad():
        mha.heads.q_proj.weight.copy_(h.q_up.weight @ h.q_down.weight)  # W_UQ W_DQ
        mha.heads.k_proj.weight.copy_(h.k_up.weight @ h.kv_down.weight)  # W_UK W_DKV
        mha.heads.v_proj.weight.copy_(h.v_up.weight @ h.kv_down.weight)  # W_UV W_DKV
        mha.heads.o_proj.weight.copy_(h.o_proj.weight)
    x = torch.randn(2, 6, 16, dtype=torch.float64)
    torch.testing.assert_close(mla(x), mha(x), atol=1e-12, rtol=0)


def test_the_rope_key_is_shared_by_all_heads_and_only_it_is_rotated(make_lm) -> None:
    model = make_lm(heads="mla", heads_args={"kv_rank": 16, "nope_dim": 4})  # d_head 8: q, k are [nope 4 | rope 8]
    names = ["blocks.0.attn.hook_k", "blocks.0.attn.hook_rot_k"]
    with capture(model, names) as cache:
        model(torch.randint(0, 31, (2, 8)))
    k, rot_k = (cache[n] for n in names)  # [B, H, T, 12]
    torch.testing.assert_close(rot_k[..., :4], k[..., :4], atol=0, rtol=0)
    torch.testing.assert_close(rot_k[..., 4:], rot_k[:, :1, :, 4:].expand_as(rot_k[..., 4:]), atol=0, rtol=0)
    assert not torch.allclose(rot_k[:, :, 1:, 4:], k[:, :, 1:, 4:]), "positions after 0 must be rotated"


def test_latent_cache_bytes_per_token_count_the_latent_and_the_rope_key() -> None:
    mla = build_attention(AttentionConfig(heads="mla", heads_args={"kv_rank": 6}), SITE)
    assert mla.heads.kv_bytes_per_token(torch.bfloat16) == (6 + 4) * 2
    assert mla.heads.kv_bytes_per_token(torch.float32) == (6 + 4) * 4


def test_a_rope_dim_other_than_zero_or_d_head_is_rejected_with_the_allowed_values() -> None:
    with pytest.raises(ConfigError, match=r"heads_args.rope_dim=2: .*\(allowed: 0, 4\)"):
        build_attention(AttentionConfig(heads="mla", heads_args={"kv_rank": 6, "rope_dim": 2}), SITE)


def test_clla_sharing_every_layer_alone_is_mla(make_lm) -> None:
    args = {"kv_rank": 12, "q_rank": 10}
    mla = make_lm(n_layers=3, heads="mla", heads_args=args)
    clla = make_lm(n_layers=3, heads="clla", heads_args={**args, "share_every": 1})
    clla.load_state_dict(mla.state_dict())  # strict: the parameter names are MLA's
    tokens = torch.randint(0, 31, (2, 8))
    torch.testing.assert_close(clla(tokens), mla(tokens), atol=0, rtol=0)


def test_clla_later_layers_of_a_group_reuse_the_first_layers_latent(make_lm) -> None:
    model = make_lm(n_layers=3, heads="clla", heads_args={"kv_rank": 12, "share_every": 2})
    readers_own = [hasattr(block.attn.heads, "kv_down") for block in model.blocks]
    assert readers_own == [True, False, True], "layer 1 has no down-projection of its own; layer 2 starts a group"
    names = [f"blocks.{i}.attn.hook_latent_kv" for i in range(3)]
    with capture(model, names) as cache:
        model(torch.randint(0, 31, (2, 8)))
    torch.testing.assert_close(cache[names[1]], cache[names[0]], atol=0, rtol=0)
    assert not torch.allclose(cache[names[2]], cache[names[0]])
    assert not model.blocks[0].attn.site.shared, "the last reader of a group removes the shared latent"


def test_clla_layer_run_before_its_groups_first_layer_raises() -> None:
    site = AttentionSite(d_model=16, n_heads=4, layer_idx=1, n_layers=2)
    reader = build_attention(AttentionConfig(heads="clla", heads_args={"kv_rank": 6, "share_every": 2}), site)
    with pytest.raises(RuntimeError, match="must run in order"):
        reader(torch.randn(1, 5, 16))


@pytest.mark.parametrize("bits", [4, 8])
def test_fake_quantisation_error_is_at_most_half_a_step_and_the_gradient_passes_straight_through(bits: int) -> None:
    x = torch.randn(3, 5, 16, dtype=torch.float64, requires_grad=True)
    quantised = fake_quantise(x, bits)
    step = x.detach().abs().amax(-1, keepdim=True) / (2 ** (bits - 1) - 1)
    assert ((quantised - x).abs() <= step / 2 + 1e-12).all()
    assert (quantised / step).detach().sub((quantised / step).detach().round()).abs().max() < 1e-9, "on the grid"
    quantised.sum().backward()
    torch.testing.assert_close(x.grad, torch.ones_like(x))


def test_clla_cache_bytes_count_one_quantised_latent_per_group() -> None:
    site = AttentionSite(d_model=16, n_heads=4, n_layers=4)
    args = {"kv_rank": 16, "share_every": 2, "quant_bits": 4}
    clla = build_attention(AttentionConfig(heads="clla", heads_args=args), site)
    # 2 groups × (16 int4 = 8 bytes, one bf16 scale = 2 bytes, a bf16 RoPE key of d_head 4 = 8 bytes)
    assert clla.heads.kv_bytes_per_token(torch.bfloat16) == 2 * (8 + 2 + 8)
