"""Every sparse prefill pattern: its layout is well formed, its fast path equals its reference, and the known answers.

Known answers: block top-k with k ≥ the number of blocks, A-shape with a window over everything, and HiP with a
budget over every candidate are all dense attention; vertical-slash's layout contains every chosen line; recall is
the dense attention mass inside a mask, and the offline search picks, per head, the type with the highest recall
(a head that looks at one far key prefers vertical-slash to A-shape).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from attnlab.attention.fast.block_sparse import block_sparse_attention
from attnlab.errors import ConfigError
from attnlab.longctx.prefill.a_shape import a_shape_layout
from attnlab.longctx.prefill.block_topk import block_scores, block_topk, pooled
from attnlab.longctx.prefill.hip import hip_layout
from attnlab.longctx.prefill.layout import causal_tiles, from_tiles, layout_mask, reference_attention, select_heads
from attnlab.longctx.prefill.patterns import PATTERNS, SEARCHED, PatternSpec
from attnlab.longctx.prefill.search import recall, search_layer
from attnlab.longctx.prefill.vertical_slash import diagonal_sums, estimate, lines_mask, vertical_slash_layout
from tolerances import order_bound, scale_of


def qkv(h: int, hkv: int, t: int, d: int = 16, dtype: torch.dtype = torch.float64, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, t, d, generator=g).mul(1.5).to(dtype) for n in (h, hkv, hkv)]


SPECS = [PatternSpec(name, 48, 16) for name in PATTERNS if name not in ("dense", "minference")]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
@pytest.mark.parametrize(("h", "hkv", "t"), [(4, 2, 203), (3, 3, 160), (2, 1, 37)])
def test_each_pattern_fast_path_equals_its_reference(spec: PatternSpec, h: int, hkv: int, t: int) -> None:
    q, k, v = qkv(h, hkv, t)
    layout = spec.build(q, k, 0.25)
    assert layout is not None
    layout.check()
    got = block_sparse_attention(q, k, v, layout, scale=0.25)
    want = reference_attention(q, k, v, layout_mask(layout), 0.25)
    assert (got - want).abs().max().item() <= order_bound(torch.float64, t, 3, 4.0) * scale_of(want)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_patterns_estimate_from_low_precision_inputs(dtype: torch.dtype) -> None:
    q, k, v = qkv(4, 2, 150, dtype=dtype)
    for spec in SPECS:
        layout = spec.build(q, k, 0.25)
        assert layout is not None
        layout.check()
        got = block_sparse_attention(q, k, v, layout, scale=0.25)
        want = reference_attention(q.double(), k.double(), v.double(), layout_mask(layout), 0.25)
        bound = order_bound(torch.float32, 150, 3, 4.0) * scale_of(want)
        if dtype == torch.bfloat16:
            bound += 3 * 2.0**-8 * scale_of(v.double())
        assert (got.double() - want).abs().max().item() <= bound


def sdpa(q, k, v, scale):
    return F.scaled_dot_product_attention(q[None], k[None], v[None], is_causal=True, scale=scale, enable_gqa=True)[0]


@pytest.mark.parametrize(
    "build",
    [
        lambda q, k: block_topk(q, k, 100, 16),
        lambda q, k: a_shape_layout(q.shape[0], q.shape[1], 16, 0, 100),
        lambda q, k: hip_layout(q, k, 100, 16, sink=1, local=1),
        lambda q, k: from_tiles(causal_tiles(q.shape[0], q.shape[1], 16), q.shape[1], 16),
    ],
    ids=["topk-all", "a-shape-all", "hip-all", "tiles-all"],
)
def test_patterns_that_keep_every_block_are_dense(build) -> None:
    q, k, v = qkv(4, 2, 203)
    layout = build(q, k)
    assert layout.density() == 1.0
    got = block_sparse_attention(q, k, v, layout, scale=0.25)
    want = sdpa(q, k, v, 0.25)
    assert (got - want).abs().max().item() <= order_bound(torch.float64, 203, 3, 4.0) * scale_of(want)


def test_a_shape_keeps_the_sink_and_the_local_blocks() -> None:
    layout = a_shape_layout(1, 10 * 8, 8, sink=2, local=3)
    tiles = layout_mask(layout)[0, ::8, ::8]  # one row and column per block
    assert tiles[9].nonzero().flatten().tolist() == [0, 1, 6, 7, 8, 9]
    assert tiles[3].nonzero().flatten().tolist() == [0, 1, 2, 3]


def test_block_topk_picks_the_highest_pooled_scores() -> None:
    q, k, _ = qkv(2, 1, 64, d=8)
    s = block_scores(q, k, 16)
    assert torch.allclose(s[0, 3, 1], (pooled(q, 16)[0, 3] * pooled(k, 16)[0, 1]).sum().float())
    layout = block_topk(q, k, 2, 16)
    tiles = layout_mask(layout)[:, ::16, ::16]
    for h in range(2):
        best = set(s[h, 3].topk(2).indices.tolist()) | {3}
        assert set(tiles[h, 3].nonzero().flatten().tolist()) == best


def test_vertical_slash_estimates_from_the_last_queries_and_covers_its_lines() -> None:
    q, k, _ = qkv(3, 1, 300)
    cols, offs = estimate(q, k, 40, 60, 0.25)
    assert cols.shape == (3, 40) and offs.shape == (3, 60)
    assert set(range(30)) <= set(cols[0].tolist())  # MInference forces the first 30 columns
    assert set(range(60)) == set(offs[0].tolist()) or set(range(60)) <= set(offs[0].tolist())
    layout = vertical_slash_layout(cols, offs, 300, 16)
    layout.check()
    assert bool((lines_mask(cols, offs, 300) <= layout_mask(layout)).all())


def test_diagonal_sums_add_each_offset() -> None:
    w = torch.arange(2 * 4, dtype=torch.float64).view(1, 2, 4)  # the last 2 queries (positions 2, 3) of T = 4
    # position 2 sees offsets 2, 1, 0 at keys 0, 1, 2; position 3 sees offsets 3, 2, 1, 0 at keys 0 … 3
    want = torch.tensor([[2.0 + 7.0, 1.0 + 6.0, 0.0 + 5.0, 4.0]]) + torch.tensor([[3.0, 0, 0, 0]])
    assert torch.equal(diagonal_sums(w, 4), want)


def test_hip_spends_its_budget_and_keeps_sink_and_window() -> None:
    q, k, _ = qkv(2, 2, 64 * 16, d=8)
    layout = hip_layout(q, k, 4, 16, sink=1, local=2)
    layout.check()
    counts = layout.block_counts()  # listed blocks besides the diagonal
    assert counts[:, -1].tolist() == [1 + 2 + 4] * 2
    tiles = layout_mask(layout)[:, ::16, ::16]
    assert bool(tiles[:, 63, [0, 61, 62]].all())


def test_hip_finds_a_planted_region() -> None:
    """Key blocks 16 … 31 match every query strongly: the hierarchy, scoring each branch by its first keys (HiP
    assumes nearby keys score alike), spends its whole budget there, far from sink and window."""
    h, t, d, block = 1, 64 * 16, 8, 16
    q = torch.zeros(h, t, d, dtype=torch.float64)
    q[..., 0] = 1.0
    k = torch.randn(h, t, d, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 0.1
    k[:, 16 * block : 32 * block, 0] = 10.0
    layout = hip_layout(q, k, 2, block, sink=1, local=1)
    found = layout.blocks[0, 40:]
    between = found[(found >= 1) & (found < 38)]  # besides the sink (0) and the local block
    assert bool(((between >= 16) & (between < 32)).all()) and between.numel() == 2 * 24


def test_recall_is_the_attention_mass_inside_the_mask_and_the_search_takes_the_best() -> None:
    t, d = 256, 16
    q, k, _ = qkv(2, 1, t, d)
    k[0, 100] = q[0, 128:].mean(0) * 4.0  # head 0: every later query looks at key 100 (a vertical line)
    full = from_tiles(causal_tiles(2, t, 16), t, 16)
    assert recall(q, k, full, d**-0.5, 0).tolist() == pytest.approx([1.0, 1.0], abs=1e-9)
    layout = PatternSpec("vertical-slash", 64, 16).build(q, k, d**-0.5)
    s = (q @ k.repeat_interleave(2, 0).transpose(-1, -2)) * d**-0.5
    w = torch.softmax(s.masked_fill(~torch.ones(t, t, dtype=torch.bool).tril(), float("-inf")), -1)
    want = (w * layout_mask(layout))[:, t // 2 :].sum(-1).mean(-1)
    assert recall(q, k, layout, d**-0.5, t // 2).tolist() == pytest.approx(want.tolist(), abs=1e-6)
    heads, table = search_layer(q, k, 64, 16, d**-0.5)
    assert list(heads) == table.argmax(0).tolist()
    assert table[SEARCHED.index("vertical-slash"), 0] > table[SEARCHED.index("a-shape"), 0]


def test_minference_spec_applies_the_searched_type_per_head() -> None:
    q, k, _ = qkv(3, 1, 200)
    spec = PatternSpec("minference", 48, 16, heads=(0, 2, 1))
    layout = spec.build(q, k, 0.25)
    parts = [PatternSpec(SEARCHED[c], 48, 16).build(q, k, 0.25) for c in (0, 2, 1)]
    for h, part in enumerate(parts):
        assert torch.equal(layout_mask(layout)[h], layout_mask(part)[h])
    mixed = select_heads(parts, torch.tensor([2, 1, 0]))
    assert torch.equal(layout_mask(mixed)[0], layout_mask(parts[2])[0])


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"name": "nope"}, "pattern"), ({"name": "hip", "keys": 10}, "keys"), ({"name": "minference"}, "minference")],
)
def test_bad_specs_name_the_field(kwargs, field) -> None:
    with pytest.raises(ConfigError, match=field):
        PatternSpec(**kwargs)
