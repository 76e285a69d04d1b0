"""MoH: shared + top-k routed heads, weighted per token; the load-balance loss reaches the model."""

from __future__ import annotations

import torch

from attnlab.attention import AttentionConfig, AttentionSite, build_attention
from attnlab.hook_points import capture

SITE = AttentionSite(d_model=32, n_heads=4)


def moh_and_mha(**moh_args) -> tuple[torch.nn.Module, torch.nn.Module]:
    """A float64 MoH module and an MHA module with the same q, k, v, o weights."""
    moh = build_attention(AttentionConfig(heads="moh", heads_args=moh_args, position="rope"), SITE).double()
    mha = build_attention(AttentionConfig(heads="mha", position="rope"), SITE).double()
    loaded = mha.load_state_dict(moh.state_dict(), strict=False)
    assert not loaded.missing_keys
    return moh, mha


def zero_routers(moh: torch.nn.Module) -> None:
    with torch.no_grad():
        for name, p in moh.heads.named_parameters():
            if "router" in name:
                p.zero_()


def test_all_shared_heads_with_a_constant_router_is_mha() -> None:
    moh, mha = moh_and_mha(n_shared=4, top_k=0)
    zero_routers(moh)  # gate = h_s · softmax(0) = 4 · 1/4 = 1 for every head
    x = torch.randn(2, 6, 32, dtype=torch.float64)
    torch.testing.assert_close(moh(x), mha(x), atol=1e-12, rtol=0)


def test_with_constant_routers_active_heads_get_gate_one_and_the_rest_zero() -> None:
    """The ×h_s, ×k_r and 2·softmax rescalings: a constant router leaves MHA's scale on the chosen heads."""
    moh, mha = moh_and_mha(n_shared=1, top_k=2)
    zero_routers(moh)
    x = torch.randn(2, 6, 32, dtype=torch.float64)
    out = moh(x)
    gates = moh.heads.last_gates  # [B, T, H]
    assert set(gates.unique().tolist()) == {0.0, 1.0}
    assert (gates.sum(-1) == 3).all(), "one shared head and two routed heads are on"

    def mask_heads(_module, _inputs, z: torch.Tensor) -> torch.Tensor:  # z [B, H, T, d]
        return z * gates.transpose(1, 2).unsqueeze(-1)

    mha.hook_z.register_forward_hook(mask_heads)
    torch.testing.assert_close(out, mha(x), atol=1e-12, rtol=0)


def test_each_token_switches_on_the_shared_heads_and_exactly_top_k_routed_heads() -> None:
    moh, _ = moh_and_mha(n_shared=1, top_k=2)
    moh(torch.randn(3, 7, 32, dtype=torch.float64))
    gates = moh.heads.last_gates
    assert (gates[..., 0] > 0).all(), "the shared head is always on"
    assert ((gates[..., 1:] > 0).sum(-1) == 2).all()


def test_gates_pass_through_the_head_gate_hook(make_lm) -> None:
    model = make_lm(heads="moh", heads_args={"n_shared": 1, "top_k": 1})
    with capture(model, ["blocks.1.attn.hook_head_gate"]) as cache:
        model(torch.randint(0, 31, (2, 8)))
    gates = cache["blocks.1.attn.hook_head_gate"]
    assert gates.shape == (2, 8, 4)
    torch.testing.assert_close(gates, model.blocks[1].attn.heads.last_gates)


def test_aux_loss_reaches_the_model_in_train_mode_and_is_none_in_eval_mode(make_lm) -> None:
    model = make_lm(heads="moh", heads_args={"n_shared": 1, "top_k": 1, "aux_coef": 0.01})
    tokens = torch.randint(0, 31, (2, 8))
    model.train()(tokens)
    per_layer = [block.attn.heads.aux_loss for block in model.blocks]
    assert all(isinstance(loss, torch.Tensor) and loss.requires_grad for loss in per_layer)
    torch.testing.assert_close(model.aux_loss(), sum(per_layer))
    model.eval()(tokens)
    assert model.aux_loss() is None


def test_a_balanced_router_gives_the_balance_loss_coef_times_top_k() -> None:
    """E · Σ_e mean(p_e) · mean(m_e) with p_e = 1/E and Σ_e mean(m_e) = k is exactly k (one layer)."""
    moh, _ = moh_and_mha(n_shared=1, top_k=2, aux_coef=0.01)
    zero_routers(moh)
    moh.train()(torch.randn(2, 6, 32, dtype=torch.float64))
    torch.testing.assert_close(moh.heads.aux_loss, torch.tensor(0.02, dtype=torch.float64))


def test_the_model_loss_is_the_mean_over_layers_as_in_the_reference(make_lm) -> None:
    """MoH-DiT adds coef · mean over layers; TransformerLM sums layers, so each layer carries 1 / n_layers."""
    model = make_lm(n_layers=3, heads="moh", heads_args={"n_shared": 1, "top_k": 2, "aux_coef": 0.01})
    for block in model.blocks:
        zero_routers(block.attn)
    model.train()(torch.randint(0, 31, (2, 8)))
    torch.testing.assert_close(model.aux_loss(), torch.tensor(0.02))
