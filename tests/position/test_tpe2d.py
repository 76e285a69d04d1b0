"""2D-TPE: RoPE at row-major and column-major table positions, two attentions mixed by a per-head, per-token router."""

from __future__ import annotations

import pytest
import torch

from attnlab.attention import NORMALISERS, AttentionConfig, AttentionSite, attend_reference, build_attention
from attnlab.position.rope import apply_rotary, rope_angles, rope_inv_freq
from attnlab.position.tpe2d import TablePositions2D, TPE2DParams, column_major_positions
from tolerances import lm_atol

SITE = AttentionSite(d_model=32, n_heads=2, seq_len=16)  # d_head = 16
SOFTMAX = NORMALISERS.get("softmax")()
TABLE = {"rows": 2, "cols": 3, "start": 1}  # text, cells a b c / d e f, text: column order a d b e c f
T = 9


def qkv(t: int = T, kv_heads: int = 2) -> tuple[torch.Tensor, ...]:
    q = torch.randn(1, 2, t, 16, dtype=torch.float64)
    return q, *(torch.randn(1, kv_heads, t, 16, dtype=torch.float64) for _ in range(2))


def tpe(**args) -> TablePositions2D:
    return TablePositions2D(TPE2DParams(**{**TABLE, **args}), SITE).double()


def force(module: TablePositions2D, order: int) -> None:
    """Route every head and token to one order: log-gates (0, −inf) give r = one-hot."""

    def logits(x: torch.Tensor) -> torch.Tensor:
        out = torch.full((x.shape[0], 2, x.shape[1], 2), float("-inf"), dtype=x.dtype)
        out[..., order] = 0.0
        return out

    module.router_logits = logits


def attend(module: TablePositions2D, q, k, v, x=None, start: int = 0, causal: bool = True):
    x = torch.randn(q.shape[0], q.shape[2], 32, dtype=torch.float64) if x is None else x
    return module.attend(q, k, v, x=x, start=start, normaliser=SOFTMAX, causal=causal, scale=None, window=None)


def rope_at(x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    return apply_rotary(x, rope_angles(positions, rope_inv_freq(16, 10000.0)))


def test_column_major_positions_of_a_two_by_three_table_after_one_text_token() -> None:
    positions = torch.arange(9)
    expected = [0, 1, 3, 5, 2, 4, 6, 7, 8]  # a→1 b→3 c→5 d→2 e→4 f→6; text keeps its index
    assert column_major_positions(positions, rows=2, cols=3, start=1).tolist() == expected


def test_tokens_of_one_cell_stay_contiguous_in_column_order() -> None:
    positions = torch.arange(8)  # a 2 × 2 table, two tokens per cell: a a b b / c c d d
    expected = [0, 1, 4, 5, 2, 3, 6, 7]  # column order a a c c b b d d
    assert column_major_positions(positions, rows=2, cols=2, cell_tokens=2).tolist() == expected


def test_router_is_a_distribution_over_the_orders_per_head_and_token_from_each_heads_slice() -> None:
    module = tpe()
    x = torch.randn(1, T, 32, dtype=torch.float64)
    logits = module.router_logits(x)
    assert logits.shape == (1, 2, T, 2)
    w1, w2, w3 = module.w1.weight, module.w2.weight, module.w3.weight
    assert w1.shape == (64, 16) and w3.shape == (2, 64)  # hidden 4d, weights shared by the heads
    head1 = x[..., 16:]  # head 1 reads the second d-slice of x
    torch.testing.assert_close(logits[:, 1], (torch.nn.functional.silu(head1 @ w1.T) * (head1 @ w2.T)) @ w3.T)


def test_a_row_router_is_plain_rope_attention_with_the_same_weights() -> None:
    """Router forced one-hot to the row order ⇒ vanilla (causal) RoPE attention, since p_row(m) = m."""
    cfg = AttentionConfig(position="tpe2d", position_args=TABLE)
    layer = build_attention(cfg, SITE).double()
    rope = build_attention(AttentionConfig(position="rope"), SITE).double()
    rope.heads.load_state_dict(layer.heads.state_dict())
    force(layer.position, 0)
    x = torch.randn(2, T, 32, dtype=torch.float64)
    torch.testing.assert_close(layer(x), rope(x), atol=1e-12, rtol=0)


def test_a_column_router_with_the_sequence_mask_is_rope_at_column_positions_causal_in_sequence() -> None:
    q, k, v = qkv()
    module = tpe()
    force(module, 1)
    col = column_major_positions(torch.arange(T), **TABLE)
    want = attend_reference(rope_at(q, col), rope_at(k, col), v, normaliser=SOFTMAX, causal=True)
    got = attend(module, q, k, v)
    torch.testing.assert_close(got.out, want.out, atol=1e-12, rtol=0)
    torch.testing.assert_close(got.weights, want.weights, atol=1e-12, rtol=0)


def test_a_column_router_with_the_order_mask_is_the_authors_sort_then_causal_rope() -> None:
    """The authors' form: sort tokens by p_col, run standard causal RoPE attention, gather back."""
    q, k, v = qkv()
    module = tpe(mask="order")
    force(module, 1)
    perm = torch.argsort(column_major_positions(torch.arange(T), **TABLE))  # token at each column-order slot
    pos = torch.arange(T)
    sorted_out = attend_reference(
        rope_at(q[:, :, perm], pos), rope_at(k[:, :, perm], pos), v[:, :, perm], normaliser=SOFTMAX
    )
    torch.testing.assert_close(
        attend(module, q, k, v).out, sorted_out.out[:, :, torch.argsort(perm)], atol=1e-12, rtol=0
    )


@pytest.mark.parametrize("kv_heads", [2, 1], ids=["mha", "mqa"])
def test_output_and_pattern_are_the_router_mix_of_the_two_orders(kv_heads: int) -> None:
    q, k, v = qkv(kv_heads=kv_heads)
    module = tpe()
    x = torch.randn(1, T, 32, dtype=torch.float64)
    gates = module.router_logits(x).softmax(-1)
    pos = torch.arange(T)
    outs = [
        attend_reference(rope_at(q, p), rope_at(k, p), v, normaliser=SOFTMAX, causal=True)
        for p in (pos, column_major_positions(pos, **TABLE))
    ]  # with one key head, every query head still reads both orders
    got = attend(module, q, k, v, x)
    torch.testing.assert_close(got.out, sum(gates[..., j : j + 1] * outs[j].out for j in range(2)), atol=1e-12, rtol=0)
    mixed = sum(gates[..., j : j + 1] * outs[j].weights for j in range(2))
    torch.testing.assert_close(got.weights, mixed, atol=1e-12, rtol=0)
    assert got.scores is None


def test_the_order_mask_changes_only_table_tokens_at_the_layer() -> None:
    """Tokens after the table see every cell in both orders; a table token sees cells later in the sequence."""
    q, k, v = qkv()
    x = torch.randn(1, T, 32, dtype=torch.float64)
    order, sequence = tpe(mask="order"), tpe()
    sequence.load_state_dict(order.state_dict())
    by_order, by_sequence = attend(order, q, k, v, x).out, attend(sequence, q, k, v, x).out
    torch.testing.assert_close(by_order[:, :, 7:], by_sequence[:, :, 7:], atol=1e-12, rtol=0)
    torch.testing.assert_close(by_order[:, :, :2], by_sequence[:, :, :2], atol=1e-12, rtol=0)  # text, cell a
    assert not torch.allclose(by_order[:, :, 2], by_sequence[:, :, 2])  # b sees d (below a) in column order


def test_with_the_sequence_mask_a_model_is_causal_and_cached_decoding_equals_the_full_pass(make_lm) -> None:
    # float64: the checks are of the mask and the cache, which are exact, not of float32 rounding.
    model = make_lm(position="tpe2d", position_args=TABLE, heads="gqa", heads_args={"n_kv_heads": 2}).double()
    tokens = torch.randint(0, 31, (2, T))
    edited = tokens.clone()
    edited[:, 4] = (edited[:, 4] + 1) % 31  # cell d, later in the sequence than cells b, c
    full = model(tokens)
    torch.testing.assert_close(model(edited)[:, :4], full[:, :4], atol=1e-6, rtol=0)
    cache = model.new_cache()
    with torch.no_grad():
        steps = torch.cat([model(tokens[:, :3], cache)] + [model(tokens[:, t : t + 1], cache) for t in range(3, T)], 1)
    torch.testing.assert_close(steps, full, atol=lm_atol(full), rtol=0)  # summation order only (tests/tolerances.py)


def test_the_order_mask_breaks_sequence_causality_inside_the_table(make_lm) -> None:
    """The documented leak: in column order cell b (position 2) comes after cell d (position 4)."""
    model = make_lm(position="tpe2d", position_args={**TABLE, "mask": "order"})
    tokens = torch.randint(0, 31, (2, T))
    edited = tokens.clone()
    edited[:, 4] = (edited[:, 4] + 1) % 31
    before, after = model(tokens), model(edited)
    torch.testing.assert_close(after[:, :2], before[:, :2], atol=1e-6, rtol=0)  # text and cell a come before d
    assert not torch.allclose(after[:, 2], before[:, 2], atol=1e-4), "cell b should see the later cell d"


def test_the_entropy_penalty_is_an_aux_loss_in_training_only(make_lm) -> None:
    model = make_lm(position="tpe2d", position_args={**TABLE, "entropy_weight": 0.5}).train()
    model(torch.randint(0, 31, (2, T)))
    aux = model.aux_loss()
    assert aux is not None and aux.requires_grad
    assert 0 < aux.item() <= 0.5 * torch.log(torch.tensor(2.0)).item() + 1e-6  # λ · mean H(r), H ≤ ln 2
    layer = model.blocks[0].attn.position
    aux.backward()
    assert layer.w3.weight.grad is not None and layer.w3.weight.grad.abs().sum() > 0
    model.eval()
    model(torch.randint(0, 31, (2, T)))
    assert model.aux_loss() is None


def test_the_entropy_is_the_mean_over_table_tokens_and_heads_divided_by_the_layers() -> None:
    site = AttentionSite(d_model=32, n_heads=2, seq_len=16, n_layers=2)
    module = TablePositions2D(TPE2DParams(**TABLE, entropy_weight=3.0), site).double().train()
    q, k, v = qkv()
    x = torch.randn(1, T, 32, dtype=torch.float64)
    attend(module, q, k, v, x)
    r = module.router_logits(x).softmax(-1)
    entropy = -(r * r.log()).sum(-1)[..., 1:7]  # the six cells
    torch.testing.assert_close(module.aux_loss, 3.0 / 2 * entropy.mean(), atol=1e-12, rtol=0)


def test_a_kernel_normaliser_is_refused() -> None:
    q, k, v = qkv()
    with pytest.raises(ValueError, match="kernel"):
        tpe().attend(
            q,
            k,
            v,
            x=torch.randn(1, T, 32),
            start=0,
            normaliser=NORMALISERS.get("linear_elu")(NORMALISERS.entry("linear_elu").params(), SITE),
            causal=True,
            scale=None,
            window=None,
        )


@pytest.mark.parametrize("mask", ["sequence", "order"])
def test_gradcheck_of_the_attention_layer_in_float64(mask: str) -> None:
    args = {"rows": 2, "cols": 2, "start": 1, "mask": mask}  # the 2 × 2 table fits in 6 tokens
    layer = build_attention(
        AttentionConfig(position="tpe2d", position_args=args), AttentionSite(d_model=8, n_heads=2, seq_len=16)
    )
    layer = layer.double().train()
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_(0.0, 0.5)
    x = torch.randn(1, 6, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda inp: (layer(inp), layer.position.aux_loss), (x,), eps=1e-6, atol=1e-5)
