"""2D-TPE: table tokens indexed in row-major and column-major order; heads read the table one way or the other."""

from __future__ import annotations

import pytest
import torch

from attnlab.attention import NORMALISERS, AttentionSite, attend_reference
from attnlab.errors import ConfigError
from attnlab.position.rope import RoPE, RoPEParams, apply_rotary, rope_angles, rope_inv_freq
from attnlab.position.tpe2d import (
    TablePositions2D,
    TPE2DParams,
    column_major_positions,
    table_order_attention,
    table_router,
)

SITE = AttentionSite(d_model=32, n_heads=2, seq_len=16)  # d_head = 16
SOFTMAX = NORMALISERS.get("softmax")()


def qkv(t: int) -> tuple[torch.Tensor, ...]:
    return tuple(torch.randn(1, 2, t, 16, dtype=torch.float64) for _ in range(3))


def test_column_major_positions_of_a_two_by_three_table_after_one_text_token() -> None:
    """Sequence: text, then cells a b c / d e f (row-major), then text. Column order: a d b e c f."""
    positions = torch.arange(9)
    expected = [0, 1, 3, 5, 2, 4, 6, 7, 8]  # a→1 b→3 c→5 d→2 e→4 f→6; text keeps its index
    assert column_major_positions(positions, rows=2, cols=3, start=1).tolist() == expected


def test_tokens_of_one_cell_stay_contiguous_in_column_order() -> None:
    positions = torch.arange(8)  # a 2 × 2 table, two tokens per cell: a a b b / c c d d
    expected = [0, 1, 4, 5, 2, 3, 6, 7]  # column order a a c c b b d d
    assert column_major_positions(positions, rows=2, cols=2, cell_tokens=2).tolist() == expected


def test_all_heads_in_row_order_is_rope() -> None:
    q, k, _ = qkv(9)
    positions = torch.arange(9)
    tpe = TablePositions2D(TPE2DParams(rows=2, cols=3, start=1, head_orders=["row", "row"]), SITE)
    rope = RoPE(RoPEParams(), SITE)
    for got, want in zip(tpe.rotate(q, k, positions), rope.rotate(q, k, positions), strict=True):
        assert torch.equal(got, want)


def test_a_column_order_head_is_rope_at_column_major_positions() -> None:
    q, k, _ = qkv(9)
    positions = torch.arange(9)
    tpe = TablePositions2D(TPE2DParams(rows=2, cols=3, start=1), SITE)  # default: head 0 row, head 1 col
    rq, rk = tpe.rotate(q, k, positions)
    col = rope_angles(column_major_positions(positions, 2, 3, 1), rope_inv_freq(16, 10000.0))
    torch.testing.assert_close(rq[:, 1], apply_rotary(q[:, 1], col), atol=0, rtol=0)
    torch.testing.assert_close(rk[:, 1], apply_rotary(k[:, 1], col), atol=0, rtol=0)
    torch.testing.assert_close(rq[:, 0], apply_rotary(q[:, 0], rope_angles(positions, rope_inv_freq(16, 1e4))))


def test_head_orders_must_name_one_order_per_head() -> None:
    with pytest.raises(ConfigError, match="head_orders"):
        TablePositions2D(TPE2DParams(head_orders=["row"]), SITE)


def test_with_one_key_head_every_query_head_follows_the_first_heads_order() -> None:
    tpe = TablePositions2D(TPE2DParams(rows=2, cols=3, start=1), SITE)  # head 0 row, head 1 col
    q, k = torch.randn(1, 2, 9, 16), torch.randn(1, 1, 9, 16)  # MQA: one key head for both
    rows = TablePositions2D(TPE2DParams(rows=2, cols=3, start=1, head_orders=["row", "row"]), SITE)
    for got, want in zip(tpe.rotate(q, k, torch.arange(9)), rows.rotate(q, k, torch.arange(9)), strict=True):
        assert torch.equal(got, want)


def one_hot(order: int, t: int) -> torch.Tensor:
    gates = torch.zeros(1, 2, t, 2, dtype=torch.float64)
    gates[..., order] = 1.0
    return gates


def test_reference_with_a_row_router_is_causal_rope_attention() -> None:
    """The card's unit test: router forced to one-hot order 1 ⇒ vanilla RoPE attention."""
    q, k, v = qkv(9)
    positions = torch.arange(9)
    orders = [positions, column_major_positions(positions, 2, 3, 1)]
    out = table_order_attention(q, k, v, one_hot(0, 9), orders, normaliser=SOFTMAX)
    rq, rk = RoPE(RoPEParams(), SITE).rotate(q, k, positions)
    torch.testing.assert_close(out, attend_reference(rq, rk, v, normaliser=SOFTMAX).out, atol=1e-12, rtol=0)


def test_reference_column_order_equals_sorting_by_column_then_causal_rope() -> None:
    """The authors' form: sort tokens by p_col, run standard causal RoPE attention, gather back."""
    q, k, v = qkv(9)
    positions = torch.arange(9)
    col = column_major_positions(positions, 2, 3, 1)
    out = table_order_attention(q, k, v, one_hot(1, 9), [positions, col], normaliser=SOFTMAX)
    perm = torch.argsort(col)  # sequence index of the token at each column-order slot
    rq, rk = RoPE(RoPEParams(), SITE).rotate(q[:, :, perm], k[:, :, perm], positions)
    sorted_out = attend_reference(rq, rk, v[:, :, perm], normaliser=SOFTMAX).out
    torch.testing.assert_close(out, sorted_out[:, :, torch.argsort(perm)], atol=1e-12, rtol=0)


def test_reference_mixes_the_two_orders_per_head_and_token() -> None:
    q, k, v = qkv(9)
    positions = torch.arange(9)
    orders = [positions, column_major_positions(positions, 2, 3, 1)]
    gates = torch.softmax(torch.randn(1, 2, 9, 2, dtype=torch.float64), dim=-1)
    row = table_order_attention(q, k, v, one_hot(0, 9), orders, normaliser=SOFTMAX)
    col = table_order_attention(q, k, v, one_hot(1, 9), orders, normaliser=SOFTMAX)
    mixed = table_order_attention(q, k, v, gates, orders, normaliser=SOFTMAX)
    torch.testing.assert_close(mixed, gates[..., :1] * row + gates[..., 1:] * col, atol=1e-12, rtol=0)


def test_router_gives_a_distribution_over_orders_per_head_and_token() -> None:
    x_heads = torch.randn(1, 2, 9, 16, dtype=torch.float64)
    w1, w2, w3 = (torch.randn(64, 16), torch.randn(64, 16), torch.randn(2, 64))
    gates = table_router(x_heads, w1.double(), w2.double(), w3.double())
    assert gates.shape == (1, 2, 9, 2)
    torch.testing.assert_close(gates.sum(-1), torch.ones(1, 2, 9, dtype=torch.float64))
