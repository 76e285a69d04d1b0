"""MLA (latent KV + decoupled RoPE key) and CLLA (the latent shared across layers, optionally quantised)."""

from __future__ import annotations

import pytest
import torch

from attnlab.attention import AttentionConfig, AttentionSite, LayerKVCache, build_attention
from attnlab.attention.heads.mla import dequantise, fake_quantise, pack_int4, quantise, unpack_int4
from attnlab.errors import ConfigError
from attnlab.hook_points import capture
from tolerances import order_bound, scale_of

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


# --- KV-cache decoding stores the latent -------------------------------------------------------------------

LATENT = {"kv_rank": 11, "q_rank": 10}  # odd kv_rank: int4 packing needs a pad nibble
VARIANTS = {
    "mla": ("mla", LATENT),
    "clla-fp": ("clla", {**LATENT, "share_every": 3}),  # 4 layers: groups {0, 1, 2}, {3}
    "clla-int8": ("clla", {**LATENT, "share_every": 2, "quant_bits": 8}),
    "clla-int4": ("clla", {**LATENT, "share_every": 2, "quant_bits": 4}),
}


def decode(model, tokens: torch.Tensor, size: int):
    cache = model.new_cache()
    out = torch.cat([model(tokens[:, i : i + size], cache) for i in range(0, tokens.shape[1], size)], dim=1)
    assert cache.length == tokens.shape[1]
    assert all(layer.length == tokens.shape[1] for layer in cache.layers)
    return out, cache


def latent_model(make_lm, variant: str):
    heads, args = VARIANTS[variant]
    return make_lm(n_layers=4, heads=heads, heads_args=args)


@pytest.mark.parametrize("chunk", [1, 3], ids=["one-at-a-time", "chunks-of-3"])
@pytest.mark.parametrize("variant", VARIANTS)
@torch.no_grad()
def test_decoding_from_the_latent_cache_matches_the_full_forward(make_lm, variant: str, chunk: int) -> None:
    model = latent_model(make_lm, variant).double()
    tokens = torch.randint(0, 31, (2, 8))
    out, _ = decode(model, tokens, chunk)
    torch.testing.assert_close(out, model(tokens), atol=1e-10, rtol=1e-10)
    assert not model.blocks[0].attn.site.shared, "the last reader of a group removes the shared cached latent"


@pytest.mark.parametrize("variant", VARIANTS)
@torch.no_grad()
def test_the_cache_stores_the_latent_and_the_shared_rope_key_not_full_keys_and_values(make_lm, variant: str) -> None:
    model = latent_model(make_lm, variant)
    _, cache = decode(model, torch.randint(0, 31, (2, 7)), 3)
    heads, args = VARIANTS[variant]
    bits = args.get("quant_bits")
    latent = {
        None: {"latent": ((2, 7, 11), torch.float32)},
        8: {"latent_codes": ((2, 7, 11), torch.int8), "latent_scale": ((2, 7, 1), torch.float32)},
        4: {"latent_codes": ((2, 7, 6), torch.uint8), "latent_scale": ((2, 7, 1), torch.float32)},  # packed
    }[bits]
    owner = {**latent, "k_rope": ((2, 1, 7, 8), torch.float32)}  # d_head 8: one rotated RoPE key for all heads
    for i, layer in enumerate(cache.layers):
        stored = {name: (tuple(t.shape), t.dtype) for name, t in layer.store.items()}
        first = heads == "mla" or i % args["share_every"] == 0
        assert stored == (owner if first else {}), f"layer {i}"
        assert layer.k is None and layer.v is None


@pytest.mark.parametrize("variant", VARIANTS)
@torch.no_grad()
def test_measured_cache_bytes_per_token_match_kv_bytes_per_token_and_beat_mha(make_lm, variant: str) -> None:
    model = latent_model(make_lm, variant)
    batch, n = 2, 7
    _, cache = decode(model, torch.randint(0, 31, (batch, n)), 1)
    measured = sum(layer.nbytes() / (batch * n) for layer in cache.layers)
    heads = [block.attn.heads for block in model.blocks]
    # mla reports one layer, clla the whole model (one latent per group)
    if VARIANTS[variant][0] == "mla":
        reported = sum(h.kv_bytes_per_token(torch.float32) for h in heads)
    else:
        reported = heads[0].kv_bytes_per_token(torch.float32)
    assert measured == reported
    mha = make_lm(n_layers=4)
    _, mha_cache = decode(mha, torch.randint(0, 31, (batch, n)), 1)
    mha_per_token = 4 * 2 * 4 * 8 * 4  # layers · (k, v) · heads · d_head · float32 bytes
    assert mha_cache.nbytes() / (batch * n) == mha_per_token
    assert measured < mha_per_token
    assert max(layer.nbytes() for layer in cache.layers) / (batch * n) < mha_per_token / 4, "per layer, too"


@pytest.mark.parametrize("bits", [4, 8])
@torch.no_grad()
def test_the_full_forward_sees_the_latent_the_quantised_cache_holds(make_lm, bits: int) -> None:
    variant = f"clla-int{bits}"
    model = latent_model(make_lm, variant)
    tokens = torch.randint(0, 31, (2, 6))
    _, cache = decode(model, tokens, 1)
    with capture(model, ["blocks.0.attn.hook_latent_kv"]) as seen:
        model(tokens)
    codes, scale = cache[0].store["latent_codes"], cache[0].store["latent_scale"]
    if bits == 4:
        codes = unpack_int4(codes, 11)
    assert codes.abs().max() <= 2 ** (bits - 1) - 1
    # The full pass attends over the dequantised codes the cache keeps: the same codes, and scales that differ only
    # by the rounding of the latent they come from (norm(W h) after the block's norm: 32-term sums, 3 steps; a 6-row
    # product here, 1-row ones when decoding, which MKL's AVX2 kernels round differently). Skipping the quantisation
    # instead would differ by up to half a step, amax / 14 (int4) or amax / 254 (int8).
    expected = dequantise(codes, scale)
    atol = order_bound(torch.float32, n_terms=32, depth=3) * scale_of(expected)
    torch.testing.assert_close(seen["blocks.0.attn.hook_latent_kv"], expected, atol=atol, rtol=0)


def test_int4_codes_pack_two_per_byte_and_unpack_exactly() -> None:
    x = torch.randn(3, 5, 11)
    codes, scale = quantise(x, 4)
    packed = pack_int4(codes)
    assert packed.dtype == torch.uint8 and packed.shape == (3, 5, 6)
    assert torch.equal(unpack_int4(packed, 11), codes)
    assert torch.equal(dequantise(codes, scale), fake_quantise(x, 4))


def test_extend_cache_with_the_latent_of_other_tokens_raises() -> None:
    """project() returns the new tokens' latent; extend_cache refuses one computed for a different number of tokens."""
    mla = mla_module(kv_rank=6)
    projection = mla.heads.project(torch.zeros(1, 3, 16, dtype=torch.float64))
    k = torch.zeros(1, 4, 2, 8, dtype=torch.float64)
    with pytest.raises(ValueError, match="latent of 3 tokens for 2 new keys"):
        mla.heads.extend_cache(LayerKVCache(), k, k, projection.latent)
