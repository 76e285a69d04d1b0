"""Caller masks (``attnlab.types.AttentionMask``) through every path that takes them, against the reference.

- Exactness: a mask that hides nothing beyond the layer's rule, and position ids equal to the indices, run today's
  call bitwise (``torch.equal``) on every backend;
- each masked path (SDPA, PyTorch tiles with their block form, heads' own attention, flex) equals the dense
  reference in float64, outputs and every gradient, on odd shapes, with GQA and with rows that see no key;
- a row that sees no key has output 0 on every path and finite gradients; a hook on the pattern sees the mask;
- document ids equal running each document alone; the layers that cannot take a mask refuse it in one line.
"""

from __future__ import annotations

import pytest
import torch

from attnlab.attention import AttentionConfig, AttentionSite, attend_reference, build_attention
from attnlab.attention.fast import chunked
from attnlab.attention.masks import FULL, HIDDEN, PARTIAL, dense_mask, layer_mask, mask_blocks
from attnlab.attention.normalisers import NORMALISERS
from attnlab.types import AttentionMask
from tolerances import order_bound, scale_of

SITE = AttentionSite(d_model=32, n_heads=4, seq_len=32)
ENCODER = AttentionSite(d_model=32, n_heads=4, causal=False, seq_len=32)


def pair(site: AttentionSite = SITE, **attention: object) -> tuple[torch.nn.Module, torch.nn.Module]:
    """A layer on its own backend and the same weights on backend reference, in float64."""
    fast = build_attention(AttentionConfig(**attention), site).double()
    slow = build_attention(AttentionConfig(**{**attention, "backend": "reference"}), site).double()
    slow.load_state_dict(fast.state_dict())
    return fast, slow


def random_mask(b: int, t_q: int, t_k: int, *, heads: int = 1, empty_row: bool = True) -> AttentionMask:
    """A boolean mask with ~60% visible entries; row 1 of batch 0 sees no key at all."""
    visible = torch.rand(b, heads, t_q, t_k) < 0.6
    if empty_row:
        visible[0, :, 1] = False
    return AttentionMask(visible=visible)


def assert_close64(got: torch.Tensor, want: torch.Tensor, n_terms: int, name: str) -> None:
    """float64: two orders of one computation differ by order_bound (depth 6: projections, scores, normaliser,
    weights·v, output projection, the backward's extra matmul)."""
    bound = order_bound(torch.float64, n_terms, depth=6) * max(scale_of(want), 1.0)
    err = (got - want).abs().max().item()
    assert err <= bound, f"{name}: {err:.3e} > {bound:.3e}"


def check_layer_pair(fast: torch.nn.Module, slow: torch.nn.Module, x: torch.Tensor, **kwargs: object) -> None:
    """Outputs, the input's gradient and every parameter's gradient agree."""
    xf, xs = x.clone().requires_grad_(), x.clone().requires_grad_()
    yf, ys = fast(xf, **kwargs), slow(xs, **kwargs)
    assert torch.isfinite(yf).all()
    assert_close64(yf, ys, x.shape[1] * 32, "output")
    g = torch.randn_like(ys)
    (yf * g).sum().backward()
    (ys * g).sum().backward()
    assert torch.isfinite(xf.grad).all()
    assert_close64(xf.grad, xs.grad, x.shape[1] * 32, "d input")
    for (name, pf), (_, ps) in zip(fast.named_parameters(), slow.named_parameters(), strict=True):
        if ps.grad is not None:
            assert_close64(pf.grad, ps.grad, x.shape[0] * x.shape[1] * 32, f"d {name}")


# --- exactness: nothing hidden beyond the rule, positions equal to the indices → today's call, bitwise -----------

EXACT = [
    dict(),
    dict(window=3),
    dict(position="alibi"),
    dict(position="t5"),
    dict(position="alibi", backend="chunked"),
    dict(normaliser="sigmoid"),
    dict(normaliser="lssa", backend="chunked"),
    dict(normaliser="cog", backend="chunked", window=4),
    dict(normaliser="softmax", normaliser_args={"softcap": 20.0}),
    dict(backend="reference", position="fope"),
    dict(heads="differential"),
    dict(heads="talking_heads"),
    dict(heads="sinks", heads_args={"n_sinks": 2}, position="alibi"),
    dict(heads="mla", heads_args={"kv_rank": 8}),
    dict(normaliser="linear_elu", backend="chunked"),
    dict(normaliser="linear_elu", backend="recurrent"),
    dict(position="learned"),
    dict(backend="flex"),
]


@pytest.mark.parametrize("attention", EXACT, ids=[str(a) for a in EXACT])
@pytest.mark.parametrize("causal", [True, False])
def test_indices_and_a_mask_that_hides_nothing_reproduce_todays_output_bitwise(attention: dict, causal: bool) -> None:
    site = SITE if causal else ENCODER
    try:
        layer = build_attention(AttentionConfig(**attention), site)
    except Exception as err:  # a pairing the registry refuses (tests/zoo checks those)
        pytest.skip(f"unsupported: {err}")
    x = torch.randn(2, 9, 32)
    want = layer(x)
    arange = torch.arange(9)
    same = [layer(x, position_ids=arange), layer(x, position_ids=arange[None].expand(2, 9))]
    if not hasattr(layer.normaliser, "attend"):  # kernel attention takes no mask at all (refused below)
        padding = AttentionMask(key_padding=torch.ones(2, 9, dtype=torch.bool))
        same += [layer(x, mask=padding), layer(x, mask=AttentionMask(visible=torch.ones(1, 1, 9, 9, dtype=torch.bool)))]
        if causal:
            same.append(layer(x, mask=AttentionMask(causal=True)))
            same.append(layer(x, mask=torch.ones(9, 9, dtype=torch.bool).tril()[None]))
    for got in same:
        assert torch.equal(got, want)


def test_exactness_on_the_compiled_kernels(native_kernels: object) -> None:
    """The native path (rule auto-on-kernels) is kept for a mask that hides nothing: bitwise the same output."""
    layer = build_attention(AttentionConfig(position="alibi"), SITE)
    assert layer.choose_path(t_q=9).path == "native"
    x = torch.randn(2, 9, 32)
    want = layer(x)
    assert torch.equal(layer(x, position_ids=torch.arange(9), mask=AttentionMask(causal=True)), want)
    assert torch.equal(layer(x, mask=torch.ones(2, 9)), want)


def test_exactness_when_decoding_with_the_cache() -> None:
    layer = build_attention(AttentionConfig(position="alibi"), SITE)
    x = torch.randn(1, 6, 32)
    from attnlab.attention import LayerKVCache

    plain, given = LayerKVCache(), LayerKVCache()
    for t in range(6):
        want = layer(x[:, t : t + 1], cache=plain)
        got = layer(x[:, t : t + 1], cache=given, position_ids=torch.tensor([t]), mask=torch.ones(1, t + 1))
        assert torch.equal(got, want)
    assert given.positions is None  # every position was its index: nothing kept


# --- masked paths against the reference ------------------------------------------------------------------------

MASKED = {
    "sdpa": dict(),
    "sdpa-window": dict(window=3),
    "tiles-window": dict(window=2),  # Tk ≥ 4·window: window-in-tiles
    "tiles-alibi": dict(position="alibi"),  # mask-in-tiles
    "tiles-t5": dict(position="t5"),
    "tiles-softcap": dict(normaliser_args={"softcap": 5.0}, backend="chunked"),
    "tiles-sigmoid": dict(normaliser="sigmoid", backend="chunked"),
    "tiles-lssa": dict(normaliser="lssa", backend="chunked"),
    "tiles-lssar": dict(normaliser="lssar", backend="chunked"),
    "tiles-cog": dict(normaliser="cog", backend="chunked"),
    "tiles-clipped": dict(normaliser="clipped_softmax", backend="chunked"),
    "tiles-relu": dict(normaliser="relu", normaliser_args={"alpha": 1.0}, backend="chunked"),
    "reference-sigmoid": dict(normaliser="sigmoid"),
    "heads-differential": dict(heads="differential"),
    "heads-talking": dict(heads="talking_heads"),
    "heads-sinks": dict(heads="sinks", heads_args={"n_sinks": 2}),
    "heads-sinks-alibi": dict(heads="sinks", heads_args={"n_sinks": 2}, position="alibi"),
    "heads-rcmha": dict(heads="rcmha"),
    "gqa": dict(heads="gqa", heads_args={"n_kv_heads": 2}),
    "gqa-tiles": dict(heads="gqa", heads_args={"n_kv_heads": 2}, backend="chunked"),
}
PATH_OF = {"sdpa": "sdpa", "tiles": "chunked", "heads": "heads", "reference": "reference", "gqa": None}


@pytest.mark.parametrize("name", list(MASKED))
@pytest.mark.parametrize("kind", ["boolean", "per-head", "padding", "documents"])
def test_a_masked_path_equals_the_reference(name: str, kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("attnlab.attention.fast.native.ENABLED", False)  # the kernels never take a mask anyway
    try:
        fast, slow = pair(**MASKED[name])
    except Exception as err:
        pytest.skip(f"unsupported: {err}")
    b, t = 2, 11
    if kind == "boolean":
        mask = random_mask(b, t, t)
    elif kind == "per-head":
        mask = random_mask(b, t, t, heads=4)
    elif kind == "padding":
        mask = AttentionMask(key_padding=torch.arange(t)[None] < torch.tensor([[t], [7]]))
    else:
        mask = AttentionMask(documents=torch.tensor([[0] * 4 + [1] * 7, [2] * 9 + [0] * 2]))
    want_path = PATH_OF[name.split("-")[0]]
    if want_path is not None:
        got_path = fast.choose_path(t_q=t, dtype=torch.float64, mask=mask.kind).path
        assert got_path == want_path, got_path
    x = torch.randn(b, t, 32, dtype=torch.float64)
    check_layer_pair(fast, slow, x, mask=mask)
    with torch.no_grad():  # the mask changes the output (so the comparison above is not of two unmasked layers)
        assert (fast(x, mask=mask) - fast(x)).abs().max() > 1e-3


def test_flex_takes_the_mask_as_a_mask_mod() -> None:
    """Compiled flex (float32, its own kernel) with a boolean per-head mask and an empty row, against the reference."""
    fast = build_attention(AttentionConfig(backend="flex", position="alibi"), SITE)
    slow = build_attention(AttentionConfig(backend="reference", position="alibi"), SITE)
    slow.load_state_dict(fast.state_dict())
    mask = random_mask(2, 11, 11, heads=4)
    assert fast.choose_path(t_q=11, mask="boolean", positions=True).path == "flex"
    x = torch.randn(2, 11, 32)
    xf, xs = x.clone().requires_grad_(), x.clone().requires_grad_()
    positions = torch.tensor([0, 1, 2, 3, 3, 3, 4, 5, 9, 7, 8])  # repeated and non-monotone
    yf, ys = fast(xf, mask=mask, position_ids=positions), slow(xs, mask=mask, position_ids=positions)
    bound = order_bound(torch.float32, 11 * 32, depth=6) * scale_of(ys)
    assert (yf - ys).abs().max().item() <= bound
    g = torch.randn_like(ys)
    (yf * g).sum().backward()
    (ys * g).sum().backward()
    assert (xf.grad - xs.grad).abs().max().item() <= order_bound(torch.float32, 11 * 32, depth=8) * scale_of(xs.grad)


# --- the tiles' block form ---------------------------------------------------------------------------------------


def test_mask_blocks_known_answer() -> None:
    visible = torch.zeros(1, 1, 4, 6, dtype=torch.bool)
    visible[..., :2, :3] = True  # tile (0, 0) full
    visible[..., 2, 4] = True  # tile (1, 1) partial
    assert mask_blocks(visible, 2, 3).tolist() == [[FULL, HIDDEN], [HIDDEN, PARTIAL]]
    odd = torch.ones(2, 1, 5, 7, dtype=torch.bool)
    odd[1, 0, 4, 6] = False  # one hidden entry in one batch row: that edge tile is partial
    assert mask_blocks(odd, 2, 3).tolist() == [[FULL, FULL, FULL], [FULL, FULL, FULL], [FULL, FULL, PARTIAL]]


@pytest.mark.parametrize("whole_rows", [0, 64])
@pytest.mark.parametrize("kv_heads", [4, 2])
@pytest.mark.parametrize("rule", ["softmax", "sigmoid", "lssa", "cog"])
def test_tiles_with_a_mask_equal_the_reference(whole_rows: int, kv_heads: int, rule: str) -> None:
    """Odd shapes, blocks of 3 queries × 4 keys (whole_rows 0: the block form skips hidden tiles), GQA, an empty
    row, a band of hidden tiles; float64 outputs and gradients."""
    norm = NORMALISERS.entry(rule).factory(NORMALISERS.entry(rule).params(), SITE)
    b, t_q, t_k = 2, 13, 17
    visible = torch.rand(b, 1, t_q, t_k) < 0.5
    visible[:, :, 3:9, 4:12] = False  # whole tiles hidden
    visible[1, :, 5] = False  # an empty row: the layer guards those; the tiles get rows that see a key
    visible |= ~visible.any(-1, keepdim=True) & (torch.arange(t_k) == 0)
    q = torch.randn(b, 4, t_q, 8, dtype=torch.float64, requires_grad=True)
    k = torch.randn(b, kv_heads, t_k, 8, dtype=torch.float64, requires_grad=True)
    v = torch.randn(b, kv_heads, t_k, 5, dtype=torch.float64, requires_grad=True)
    got, _ = chunked.chunked_attention(
        q, k, v, norm.chunked_rule(), causal=False, mask=visible, chunk=3, key_block=4, whole_rows=whole_rows
    )
    want = attend_reference(q, k, v, normaliser=norm, causal=False, mask=visible).out
    assert_close64(got, want, t_k, "output")
    g = torch.randn_like(want)
    for a, r, name in zip(
        torch.autograd.grad(got, (q, k, v), g), torch.autograd.grad(want, (q, k, v), g), "qkv", strict=True
    ):
        assert_close64(a, r, t_k * b, f"d{name}")


def test_tiles_with_a_mask_pass_gradcheck() -> None:
    norm = NORMALISERS.entry("softmax").factory(NORMALISERS.entry("softmax").params(), SITE)
    visible = torch.rand(1, 2, 5, 7) < 0.6
    visible[..., 0] = True
    q, k, v = (torch.randn(1, 2, n, 3, dtype=torch.float64, requires_grad=True) for n in (5, 7, 7))

    def f(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        rule = norm.chunked_rule()
        return chunked.chunked_attention(q, k, v, rule, causal=False, mask=visible, chunk=2, key_block=3, whole_rows=0)[
            0
        ]

    assert torch.autograd.gradcheck(f, (q, k, v))


# --- a row that sees no key; hooks see the mask --------------------------------------------------------------------

EMPTY_ROW = {
    "sdpa": dict(),
    "chunked": dict(backend="chunked"),
    "reference": dict(backend="reference"),
    "heads": dict(heads="differential"),
    "sinks": dict(heads="sinks", heads_args={"n_sinks": 1}),
}


@pytest.mark.parametrize("name", list(EMPTY_ROW))
def test_a_row_that_sees_no_key_has_output_zero_on_every_path(name: str) -> None:
    layer = build_attention(AttentionConfig(**EMPTY_ROW[name]), SITE)
    z_seen: list[torch.Tensor] = []
    layer.hook_z.register_forward_hook(lambda module, inputs, z: z_seen.append(z))
    visible = torch.ones(1, 1, 5, 5, dtype=torch.bool)
    visible[..., 2, :] = False
    x = torch.randn(1, 5, 32, requires_grad=True)
    out = layer(x, mask=AttentionMask(visible=visible))
    assert torch.equal(z_seen[0][:, :, 2], torch.zeros_like(z_seen[0][:, :, 2]))
    assert not torch.equal(z_seen[0][:, :, 3], torch.zeros_like(z_seen[0][:, :, 3]))
    out.sum().backward()
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("path", ["sdpa", "tiles"])
def test_direct_calls_give_a_row_that_sees_no_key_output_zero(path: str) -> None:
    from attnlab.attention.build import sdpa
    from attnlab.attention.fast.rule_softmax import SoftmaxRule

    visible = torch.rand(1, 1, 5, 6) < 0.7
    visible[..., 3, :] = False
    visible[..., [0, 1, 2, 4], 0] = True  # every other row sees a key
    q, k, v = (torch.randn(1, 2, n, 4, dtype=torch.float64, requires_grad=True) for n in (5, 6, 6))
    if path == "sdpa":
        out = sdpa(q, k, v, causal=False, scale=None, mask=visible)
    else:
        out, _ = chunked.chunked_attention(q, k, v, SoftmaxRule(), causal=False, mask=visible, chunk=2, key_block=2)
    assert torch.equal(out[:, :, 3], torch.zeros_like(out[:, :, 3]))
    want = attend_reference(
        q, k, v, normaliser=NORMALISERS.entry("softmax").factory(None, SITE), causal=False, mask=visible
    )
    assert_close64(out, want.out, 6, "output")
    out.sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))


def test_hooks_read_the_masked_pattern() -> None:
    layer = build_attention(AttentionConfig(), ENCODER)
    seen: dict[str, torch.Tensor] = {}
    layer.hook_pattern.register_forward_hook(lambda module, inputs, w: seen.setdefault("pattern", w))
    layer.hook_attn_scores.register_forward_hook(lambda module, inputs, s: seen.setdefault("scores", s))
    mask = random_mask(2, 6, 6)
    layer(torch.randn(2, 6, 32), mask=mask)
    hidden = ~mask.visible.expand(2, 4, 6, 6)
    assert (seen["pattern"][hidden] == 0).all()
    assert torch.isneginf(seen["scores"][hidden]).all()
    assert (seen["pattern"][0, :, 1] == 0).all()  # the empty row: weights 0
    sums = seen["pattern"].sum(-1)
    assert torch.allclose(sums[1], torch.ones_like(sums[1]))


# --- document ids: each document alone; causal cross-attention; refusals ------------------------------------------


@pytest.mark.parametrize("site", [SITE, ENCODER], ids=["decoder", "encoder"])
@pytest.mark.parametrize("attention", [dict(), dict(position="alibi"), dict(backend="chunked", position="t5")])
def test_document_ids_equal_each_document_run_alone(site: AttentionSite, attention: dict) -> None:
    layer = build_attention(AttentionConfig(**attention), site).double()
    x = torch.randn(1, 10, 32, dtype=torch.float64)
    docs = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 2, 2, 2]])
    starts = torch.tensor([0, 1, 2, 0, 1, 2, 3, 0, 1, 2])  # each document from position 0
    got = layer(x, mask=AttentionMask(documents=docs), position_ids=starts)
    for a, b in ((0, 3), (3, 7), (7, 10)):
        assert_close64(got[:, a:b], layer(x[:, a:b]), 32 * 10, f"document {a}:{b}")


def test_causal_cross_attention_sees_only_the_aligned_past() -> None:
    site = AttentionSite(d_model=32, n_heads=4, cross=True, causal_cross=True)
    layer = build_attention(AttentionConfig(position="nope"), site).double()
    assert layer.causal and layer.choose_path(t_q=6).path == "sdpa"
    x, ctx = torch.randn(1, 6, 32, dtype=torch.float64), torch.randn(1, 6, 32, dtype=torch.float64)
    full = layer(x, ctx)
    for i in range(6):  # query i equals the layer over context keys 0 … i only
        assert_close64(full[:, i : i + 1], layer(x[:, i : i + 1], ctx[:, : i + 1]), 6 * 32, f"query {i}")
    changed = ctx.clone()
    changed[:, 4:] += 1.0
    assert torch.equal(layer(x, changed)[:, :4], full[:, :4])  # later context keys cannot reach earlier queries
    plain = build_attention(AttentionConfig(position="nope"), AttentionSite(d_model=32, n_heads=4, cross=True))
    assert not plain.causal  # the default cross site stays non-causal


@pytest.mark.parametrize(
    ("attention", "kwargs", "field"),
    [
        (dict(normaliser="linear_elu"), dict(mask=AttentionMask(causal=True, key_padding=None)), "mask"),
        (dict(normaliser="linear_elu", backend="recurrent"), dict(mask=torch.zeros(1, 6)), "mask"),
        (
            dict(position="tpe2d", position_args={"rows": 2, "cols": 2}),
            dict(position_ids=torch.arange(6) + 1),
            "position_ids",
        ),
        (dict(position="tpe2d", position_args={"rows": 2, "cols": 2}), dict(mask=torch.zeros(1, 6)), "mask"),
        # heads that compute attention themselves without a mask parameter (landmark, CCA) refuse one
        (dict(heads="landmark", heads_args={"block": 2}), dict(mask=torch.ones(1, 6, dtype=torch.bool)), "mask"),
        (dict(heads="cca", heads_args={"group": 2, "window": 2}), dict(mask=torch.ones(1, 6)), "mask"),
    ],
)
def test_a_layer_that_cannot_take_a_mask_or_positions_says_so_in_one_line(
    attention: dict, kwargs: dict, field: str
) -> None:
    causal_only = "tpe2d" in str(attention) or "heads" in attention
    layer = build_attention(AttentionConfig(**attention), SITE if causal_only else ENCODER)
    with pytest.raises(ValueError, match=rf"^{field}: .*allowed: {field}=None$") as err:
        layer(torch.randn(1, 6, 32), **kwargs)
    assert "\n" not in str(err.value)


def test_mask_shapes_are_checked_in_one_line() -> None:
    layer = build_attention(AttentionConfig(), SITE)
    with pytest.raises(ValueError, match=r"AttentionMask.key_padding has shape \(1, 5\); allowed: \[B, 6\]"):
        layer(torch.randn(1, 6, 32), mask=torch.ones(1, 5))
    with pytest.raises(ValueError, match=r"AttentionMask\.visible must be a boolean"):
        AttentionMask(visible=torch.ones(1, 1, 6, 6))
    assert layer_mask(AttentionMask(causal=True), 4, 4, torch.device("cpu"), causal=True, window=None) is None
    assert dense_mask(AttentionMask(causal=True), 3, 3, torch.device("cpu"), causal=False, window=None).shape == (
        1,
        1,
        3,
        3,
    )


@pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device: the CUDA paths (SDPA, flex) are not run here"
)
@pytest.mark.parametrize("attention", [dict(), dict(position="t5"), dict(normaliser="sigmoid")])
def test_masked_calls_on_cuda_equal_the_reference(attention: dict) -> None:
    """On CUDA a masked call takes SDPA (softmax), flex (a score_mod) or the reference (sigmoid: Triton takes no
    mask); float32 outputs against the reference on the same device."""
    fast = build_attention(AttentionConfig(**attention), SITE).cuda()
    slow = build_attention(AttentionConfig(**{**attention, "backend": "reference"}), SITE).cuda()
    slow.load_state_dict(fast.state_dict())
    mask = AttentionMask(visible=random_mask(2, 16, 16).visible.cuda())
    path = fast.choose_path(t_q=16, device="cuda", mask="boolean").path
    assert path in ("sdpa", "flex", "reference"), path
    x = torch.randn(2, 16, 32, device="cuda")
    got, want = fast(x, mask=mask), slow(x, mask=mask)
    assert (got - want).abs().max().item() <= order_bound(torch.float32, 16 * 32, depth=6) * scale_of(want)
