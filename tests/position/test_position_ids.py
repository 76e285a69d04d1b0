"""Per-token position ids reach every position encoding that reads positions, on every path that applies it.

Known answers first: ALiBi's bias at the given positions (read off ``hook_attn_scores``); relative encodings are
unchanged by shifting every position; per-row ids [B, T] equal each row run alone; then every path that calls the
score_mod (tiles, heads) equals the reference at repeated and non-monotone positions, gradients of T5's table
included; decoding with the cache at given positions equals the full pass; absolute tables read the given rows.
"""

from __future__ import annotations

import pytest
import torch

from attnlab.attention import AttentionConfig, AttentionSite, LayerKVCache, build_attention
from attnlab.model.transformer import PositionRangeError
from attnlab.position.alibi import alibi_slopes
from attnlab.types import AttentionMask
from tolerances import order_bound, scale_of

SITE = AttentionSite(d_model=32, n_heads=4, seq_len=32)
ODD = torch.tensor([0, 1, 2, 2, 2, 5, 4, 3, 9, 10, 10])  # repeated and non-monotone (shared positions, PINE's order)


def close64(got: torch.Tensor, want: torch.Tensor, n_terms: int = 11 * 32) -> None:
    bound = order_bound(torch.float64, n_terms, depth=6) * max(scale_of(want), 1.0)
    assert (got - want).abs().max().item() <= bound


def layer64(**attention: object) -> torch.nn.Module:
    return build_attention(AttentionConfig(**attention), SITE).double()


def test_alibi_scores_carry_the_bias_of_the_given_positions() -> None:
    layer = layer64(position="alibi", backend="reference")
    seen: list[torch.Tensor] = []
    layer.hook_attn_scores.register_forward_hook(lambda module, inputs, s: seen.append(s))
    x = torch.randn(1, 11, 32, dtype=torch.float64)
    layer(x)
    layer(x, position_ids=ODD)
    by_index, by_position = seen
    visible = torch.isfinite(by_index)
    moved = (by_position - by_index)[visible]
    idx = torch.arange(11, dtype=torch.float64)
    m = alibi_slopes(4)[None, :, None, None]
    want = -m * (ODD[:, None] - ODD[None, :]).double() + m * (idx[:, None] - idx[None, :])
    close64(moved, want.expand(1, 4, 11, 11)[visible])


@pytest.mark.parametrize("position", ["rope", "alibi", "t5", "rope_pi", "yarn"])
def test_relative_encodings_do_not_see_a_shift_of_every_position(position: str) -> None:
    layer = layer64(position=position, backend="reference")
    x = torch.randn(2, 11, 32, dtype=torch.float64)
    close64(layer(x, position_ids=torch.arange(11) + 7), layer(x))


@pytest.mark.parametrize("position", ["rope", "alibi", "t5", "fope", "rope_abf", "rope_ntk_dynamic"])
def test_per_row_positions_equal_each_row_alone(position: str) -> None:
    try:
        layer = layer64(position=position)
    except Exception as err:
        pytest.skip(f"unsupported: {err}")
    x = torch.randn(2, 11, 32, dtype=torch.float64)
    rows = torch.stack([ODD, torch.arange(11) * 2])
    both = layer(x, position_ids=rows)
    for r in range(2):
        close64(both[r : r + 1], layer(x[r : r + 1], position_ids=rows[r]))


PATHS = {
    "tiles-alibi": (dict(position="alibi"), "chunked"),
    "tiles-t5": (dict(position="t5"), "chunked"),
    "tiles-t5-chunked": (dict(position="t5", backend="chunked"), "chunked"),
    "heads-alibi": (dict(position="alibi", heads="differential"), "heads"),
    "sinks-alibi": (dict(position="alibi", heads="sinks", heads_args={"n_sinks": 1}), "heads"),
    "sdpa-rope": (dict(position="rope"), "sdpa"),
}


@pytest.mark.parametrize("name", list(PATHS))
def test_every_path_equals_the_reference_at_odd_positions(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("attnlab.attention.fast.native.ENABLED", False)
    attention, path = PATHS[name]
    fast = layer64(**attention)
    slow = layer64(**{**attention, "backend": "reference"})
    slow.load_state_dict(fast.state_dict())
    assert fast.choose_path(t_q=11, dtype=torch.float64, positions=True).path == path
    x = torch.randn(2, 11, 32, dtype=torch.float64)
    xf, xs = x.clone().requires_grad_(), x.clone().requires_grad_()
    yf, ys = fast(xf, position_ids=ODD), slow(xs, position_ids=ODD)
    close64(yf, ys)
    assert (yf - fast(x)).abs().max() > 1e-3  # the positions change the output
    g = torch.randn_like(ys)
    (yf * g).sum().backward()
    (ys * g).sum().backward()
    close64(xf.grad, xs.grad, 2 * 11 * 32)
    for (n, pf), (_, ps) in zip(fast.named_parameters(), slow.named_parameters(), strict=True):
        if ps.grad is not None:  # T5's table included: the wrapped score_mod keeps it in reach of the tiles
            assert pf.grad is not None, n
            close64(pf.grad, ps.grad, 2 * 11 * 32)


@pytest.mark.parametrize("position", ["rope", "alibi", "t5"])
def test_decoding_with_the_cache_at_given_positions_equals_the_full_pass(position: str) -> None:
    layer = layer64(position=position)
    x = torch.randn(2, 11, 32, dtype=torch.float64)
    padding = torch.ones(2, 11, dtype=torch.bool)
    padding[1, 3] = False  # one hidden key, in one row, from the cache's point of view too
    full = layer(x, position_ids=ODD, mask=AttentionMask(key_padding=padding))
    cache = LayerKVCache()
    first = layer(x[:, :6], cache=cache, position_ids=ODD[:6], mask=AttentionMask(key_padding=padding[:, :6]))
    close64(first, full[:, :6])
    for t in range(6, 11):
        step = layer(
            x[:, t : t + 1],
            cache=cache,
            position_ids=ODD[t : t + 1],
            mask=AttentionMask(key_padding=padding[:, : t + 1]),
        )
        close64(step, full[:, t : t + 1])
    assert torch.equal(cache.positions, ODD[None])


def test_absolute_tables_read_the_given_rows(make_lm) -> None:
    for position in ("learned", "sinusoidal"):
        model = make_lm(position=position)
        seen: list[torch.Tensor] = []
        model.hook_pos_embed.register_forward_hook(lambda module, inputs, p, seen=seen: seen.append(p))
        tokens = torch.randint(0, 31, (2, 5))
        ids = torch.tensor([[3, 3, 0, 1, 2], [4, 2, 1, 0, 0]])
        model(tokens, position_ids=ids)
        table = model.pos.embed(torch.arange(16))
        assert torch.equal(seen[0], table[ids])
    with pytest.raises(PositionRangeError, match="beyond the learned table"):
        make_lm(position="learned")(torch.zeros(1, 2, dtype=torch.long), position_ids=torch.tensor([0, 16]))


def test_position_ids_are_checked_in_one_line() -> None:
    layer = build_attention(AttentionConfig(), SITE)
    x = torch.randn(2, 5, 32)
    with pytest.raises(ValueError, match=r"position_ids=torch.float32 \(5,\): allowed: integers \[T\] or \[B, T\]"):
        layer(x, position_ids=torch.arange(5.0))
    with pytest.raises(ValueError, match=r"position_ids batch 3: allowed: 1 or 2"):
        layer(x, position_ids=torch.zeros(3, 5, dtype=torch.long))
