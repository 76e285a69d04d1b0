"""Softmax variants through PyTorch's SDPA by exact reformulation (``attnlab.attention.fast.sdpa_variants``)
equal attnlab's reference: outputs and every gradient (q, k, v, sink logits / vectors, the T5 table)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from attnlab.attention import HEADS, NORMALISERS, AttentionSite, attend_reference, dispatch
from attnlab.attention.core import causal_mask, repeat_kv
from attnlab.attention.fast import sdpa_band, sdpa_flash, sdpa_relative
from attnlab.attention.fast import sdpa_variants as sv
from attnlab.attention.fast.sdpa_augmented import alibi_columns
from attnlab.hook_points import capture
from attnlab.position.alibi import ALiBi
from attnlab.position.t5 import T5RelativeBias
from tolerances import gamma

N_HEADS = 4


def softmax(softcap: float | None = None) -> torch.nn.Module:
    entry = NORMALISERS.entry("softmax")
    return entry.factory(entry.params(softcap=softcap), None)


def position(kind: str, causal: bool, n_heads: int = N_HEADS) -> torch.nn.Module:
    site = AttentionSite(d_model=16 * n_heads, n_heads=n_heads, causal=causal)
    torch.manual_seed(3)
    module = ALiBi(None, site) if kind == "alibi" else T5RelativeBias(None, site)
    if kind == "t5":  # a lively table: large enough that a wrong bucket shows
        module.bias.data.normal_(0, 1.0)
    return module


def inputs(b: int, h: int, h_kv: int, t_q: int, t_k: int, d: int, dtype: torch.dtype, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, t_q, d, generator=g, dtype=dtype).requires_grad_()
    k = torch.randn(b, h_kv, t_k, d, generator=g, dtype=dtype).requires_grad_()
    v = torch.randn(b, h_kv, t_k, d, generator=g, dtype=dtype).requires_grad_()
    d_out = torch.randn(b, h, t_q, d, generator=g, dtype=dtype)
    return q, k, v, d_out


def assert_relative(actual: torch.Tensor, expected: torch.Tensor, tol: float, what: str) -> None:
    """max |Δ| ≤ tol · max |expected| (absolute tol where the expected tensor is all zeros)."""
    err = (actual.double() - expected.double()).abs().max().item()
    size = expected.double().abs().max().item()
    assert err <= tol * max(size, 1.0 if size == 0 else size), f"{what}: max |Δ| {err:.3g} vs max |ref| {size:.3g}"


def compare(fast, slow, tensors, d_out, tol: float) -> None:
    """fast() and slow() give the same output and the same gradients of every tensor in ``tensors``."""
    out, ref = fast(), slow()
    assert out.shape == ref.shape
    assert_relative(out, ref, tol, "output")
    grads = torch.autograd.grad(out, tensors, d_out.to(out.dtype))
    ref_grads = torch.autograd.grad(ref, tensors, d_out.to(ref.dtype))
    for n, (g, r) in enumerate(zip(grads, ref_grads, strict=True)):
        assert_relative(g, r, tol, f"gradient {n}")


SHAPES = [  # (Tq, Tk, H_kv)
    (1, 1, N_HEADS),
    (7, 7, N_HEADS),
    (33, 33, 2),
    (130, 130, 1),
    (5, 33, 2),  # KV-cache decoding: the queries are the last 5 positions
]


@pytest.fixture(params=[True, False], ids=["cpu-flash", "sdpa-form"])
def cpu_flash(request, monkeypatch) -> bool:
    """Both constructions: on CPU the flash op pair (sinks merged by log-sum-exp), and the one SDPA call on
    augmented inputs (sinks as prepended keys) that other devices use, run here on CPU."""
    monkeypatch.setattr(sdpa_flash, "CPU_FLASH", request.param)
    return request.param


@pytest.mark.parametrize("kind", ["alibi", "t5"])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("window", [None, 4])
@pytest.mark.parametrize(("t_q", "t_k", "h_kv"), SHAPES)
def test_position_biases_through_sdpa_equal_the_reference(kind, causal, window, t_q, t_k, h_kv, cpu_flash) -> None:
    if not causal and t_q != t_k:
        pytest.skip("non-causal attention has no KV cache")
    pos = position(kind, causal)
    mod = pos.score_mod()
    q, k, v, d_out = inputs(2, N_HEADS, h_kv, t_q, t_k, 16, torch.float32)
    params = [q, k, v, *([pos.bias] if kind == "t5" else [])]
    kwargs = dict(causal=causal, window=window)
    compare(
        lambda: sv.softmax_sdpa(q, k, v, bias=pos.score_bias(), **kwargs),
        lambda: attend_reference(q, k, v, normaliser=softmax(), score_mod=mod, **kwargs).out,
        params,
        d_out,
        1e-4,
    )


@pytest.mark.parametrize("n_heads", [8, 12])  # power-of-two slopes (2 bias columns) and not (hi / lo: 4)
def test_alibi_bias_columns_multiply_exactly_in_float32(n_heads: int) -> None:
    """m·j reaches m·T: the slopes are split (m = m_hi + m_lo) so that every product of a query's bias column with a
    key's is an exact float32 number, and the high parts m_hi·j − m_hi·i cancel exactly when summed first; checked
    for the last 64 queries at T = 4096, where the products are largest."""
    t = 4096
    slopes = position("alibi", True, n_heads).score_bias().slopes
    q_cols, k_cols = alibi_columns(slopes, n_heads, 64, t, torch.float32)  # [H, 64, E], [T, E]
    products = q_cols.double()[:, :, None, :] * k_cols.double()[None, None, :, :]  # [H, 64, T, E]
    assert torch.equal(products.float().double(), products)  # each product is a float32 number
    i = torch.arange(t - 64, t, dtype=torch.float64)[:, None]
    j = torch.arange(t, dtype=torch.float64)[None, :]
    bias = products.sum(-1)  # in float64: exact for these magnitudes
    torch.testing.assert_close(bias, slopes.double()[:, None, None] * (j - i), atol=1e-9, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n_heads", [8, 12])
def test_causal_alibi_stays_accurate_at_long_lengths(n_heads: int, dtype: torch.dtype) -> None:
    """The last 64 rows at T = 4096 against float64, with a bound that holds for any summation order.

    A score is a dot product of D + E terms (q·k and E ≤ 4 bias columns); in any order its rounding is at most
    γ_{D+E} times the sum of the terms' magnitudes (Higham 2002, Lemma 3.1), and the bias columns make that sum
    D·max|q|·max|k|·scale + 2·m_max·T. Whether the bias columns cancel before the small terms are added depends on
    the BLAS kernel's order (MKL's AVX-512 and AVX2 kernels differ), so float32 can claim only this bound; a row's
    output then moves by at most 2·max|Δs|·max|v| (softmax's first-order sensitivity), plus the output's own sum of
    T terms. In float64 the same bound is ~10⁻¹¹: the reformulation itself is exact.
    """
    t, d = 4096, 16
    q, k, v, _ = inputs(1, n_heads, n_heads, t, t, d, dtype)
    pos = position("alibi", True, n_heads)
    mod, bias = pos.score_mod(), pos.score_bias()
    with torch.no_grad():
        out = sv.softmax_sdpa(q, k, v, bias=bias)[:, :, -64:]
        q64, k64, v64 = q[:, :, -64:].double(), k.double(), v.double()
        ref = attend_reference(q64, k64, v64, normaliser=softmax(), score_mod=mod).out
    magnitude = d * q.abs().max().item() * k.abs().max().item() * d**-0.5 + 2 * bias.slopes.max().item() * t
    score_error = gamma(d + 4, dtype) * magnitude
    v_max = v.abs().max().item()
    bound = 2 * score_error * v_max + gamma(t, dtype) * v_max
    err = (out.double() - ref).abs().max().item()
    assert err <= bound, f"max |Δ| {err:.3g} > {bound:.3g}"


@pytest.mark.parametrize("kind", ["logit", "kv"])
@pytest.mark.parametrize("n_sinks", [1, 3])
@pytest.mark.parametrize("window", [None, 3])
@pytest.mark.parametrize("alibi", [False, True])
@pytest.mark.parametrize(("t_q", "t_k", "h_kv"), SHAPES)
def test_sinks_through_sdpa_equal_the_sinks_head(kind, n_sinks, window, alibi, t_q, t_k, h_kv, cpu_flash) -> None:
    site = AttentionSite(d_model=16 * N_HEADS, n_heads=N_HEADS)
    entry = HEADS.entry("sinks")
    torch.manual_seed(1)
    heads = entry.factory(entry.params(n_sinks=n_sinks, kind=kind, n_kv_heads=h_kv), site)
    if kind == "logit":
        heads.sink_logit.data.normal_(0, 2.0)
        sinks = dict(sink_logits=heads.sink_logit)
        params = [heads.sink_logit]
    else:
        heads.sink_v.data.normal_()
        sinks = dict(sink_keys=heads.sink_k, sink_values=heads.sink_v)
        params = [heads.sink_k, heads.sink_v]
    pos = position("alibi", True) if alibi else None
    mod = pos.score_mod() if pos else None
    bias = pos.score_bias() if pos else None
    q, k, v, d_out = inputs(2, N_HEADS, h_kv, t_q, t_k, 16, torch.float32)
    kwargs = dict(causal=True, window=window)
    ref_mass: list[torch.Tensor] = []

    def reference() -> torch.Tensor:
        res = heads.attend(q, k, v, normaliser=softmax(), score_mod=mod, **kwargs)
        ref_mass.append(res.sink_mass)
        return res.out

    fast_mass: list[torch.Tensor] = []

    def fast() -> torch.Tensor:
        out, mass = sv.sinks_sdpa(q, k, v, **sinks, alibi=bias, **kwargs)
        fast_mass.append(mass)
        return out

    compare(fast, reference, [q, k, v, *params], d_out, 1e-4)
    assert_relative(fast_mass[0], ref_mass[0], 1e-4, "sink mass")
    # the head's own fused path (what the layer calls on backend auto / sdpa) is the same computation
    res = heads.attend_sdpa(q, k, v, normaliser=softmax(), bias=bias, **kwargs)
    assert res.weights is None
    assert_relative(res.out, fast(), 1e-6, "attend_sdpa")


def test_non_causal_sinks_and_bf16() -> None:
    logits = torch.randn(N_HEADS, 2, requires_grad=True)
    q, k, v, d_out = inputs(2, N_HEADS, N_HEADS, 9, 9, 16, torch.float32)
    site = AttentionSite(d_model=16 * N_HEADS, n_heads=N_HEADS)
    entry = HEADS.entry("sinks")
    heads = entry.factory(entry.params(n_sinks=2, kind="logit"), site)
    heads.sink_logit = torch.nn.Parameter(logits.detach().clone())
    compare(
        lambda: sv.sinks_sdpa(q, k, v, sink_logits=heads.sink_logit, causal=False)[0],
        lambda: heads.attend(q, k, v, normaliser=softmax(), causal=False).out,
        [q, k, v, heads.sink_logit],
        d_out,
        1e-4,
    )
    qb, kb, vb = (t.detach().bfloat16() for t in (q, k, v))
    out = sv.sinks_sdpa(qb, kb, vb, sink_logits=heads.sink_logit.bfloat16())[0]
    ref = heads.attend(qb, kb, vb, normaliser=softmax()).out
    assert out.dtype == torch.bfloat16
    assert_relative(out, ref, 3e-2, "bf16 output")


@pytest.mark.parametrize("kind", ["alibi", "t5"])
def test_position_biases_in_bf16(kind: str) -> None:
    pos = position(kind, True)
    q, k, v, d_out = inputs(1, N_HEADS, N_HEADS, 40, 40, 16, torch.bfloat16)
    params = [q, k, v, *([pos.bias] if kind == "t5" else [])]
    mod = pos.score_mod()
    compare(
        lambda: sv.softmax_sdpa(q, k, v, bias=pos.score_bias()),
        lambda: attend_reference(q, k, v, normaliser=softmax(), score_mod=mod).out,
        params,
        d_out,
        3e-2,
    )


@pytest.mark.parametrize("kind", ["alibi", "t5", "sinks-logit", "sinks-kv"])
@pytest.mark.parametrize("causal", [True, False])
def test_gradcheck_in_float64(kind: str, causal: bool, cpu_flash: bool) -> None:
    q, k, v, _ = inputs(1, 2, 1, 6, 6, 4, torch.float64)
    if kind in ("alibi", "t5"):
        pos = position(kind, causal, n_heads=2).double()
        extra = [pos.bias] if kind == "t5" else []

        def fn(*ts):
            return sv.softmax_sdpa(ts[0], ts[1], ts[2], bias=pos.score_bias(), causal=causal, window=4)

    else:
        extra = (
            [torch.randn(2, 2, dtype=torch.float64, requires_grad=True)]
            if kind == "sinks-logit"
            else [torch.randn(1, 2, 4, dtype=torch.float64, requires_grad=True) for _ in range(2)]
        )

        def fn(*ts):
            sinks = dict(sink_logits=ts[3]) if kind == "sinks-logit" else dict(sink_keys=ts[3], sink_values=ts[4])
            return sv.sinks_sdpa(ts[0], ts[1], ts[2], **sinks, causal=causal)[0]

    assert torch.autograd.gradcheck(fn, (q, k, v, *extra))


def documents_reference(q, k, v, documents, causal: bool, window: int | None) -> torch.Tensor:
    t = q.shape[2]
    same = documents[:, None, :, None] == documents[:, None, None, :]  # [B, 1, T, T]
    mask = same
    if causal or window is not None:
        i, j = torch.arange(t)[:, None], torch.arange(t)[None]
        visible = causal_mask(t, t, window=window) if causal else (i - j).abs() < window
        mask = same & visible
    rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-1, -2)
    return scores.masked_fill(~mask, float("-inf")).softmax(-1) @ v


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("window", [None, 3])
def test_document_masks_through_sdpa_equal_a_dense_mask(causal: bool, window: int | None) -> None:
    documents = torch.tensor([[0] * 5 + [1] * 7 + [2] * 1 + [3] * 7, [5] * 7 + [6] * 13])  # runs of equal length
    q, k, v, d_out = inputs(2, N_HEADS, 2, 20, 20, 16, torch.float32)
    compare(
        lambda: sv.document_sdpa(q, k, v, documents, causal=causal, window=window),
        lambda: documents_reference(q, k, v, documents, causal, window),
        [q, k, v],
        d_out,
        1e-4,
    )


def test_document_ids_must_be_contiguous_runs_and_shapes_checked() -> None:
    q, k, v, _ = inputs(1, 2, 2, 4, 4, 8, torch.float32)
    with pytest.raises(ValueError, match="contiguous runs"):
        sv.document_sdpa(q, k, v, torch.tensor([[0, 1, 0, 1]]))
    with pytest.raises(ValueError, match="documents"):
        sv.document_sdpa(q, k, v, torch.zeros(1, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="sink_logits"):
        sv.sinks_sdpa(q, k, v)
    with pytest.raises(ValueError, match="Tq <= Tk"):
        sv.alibi_sdpa(q, k[:, :, :2], v[:, :, :2], torch.ones(2))
    with pytest.raises(ValueError, match="slopes"):
        sv.alibi_sdpa(q, k, v, torch.ones(3))


@pytest.mark.parametrize("kind", ["alibi", "t5"])
def test_value_head_dim_may_differ_from_the_key_head_dim(kind: str) -> None:
    """MLA / CLLA heads: q, k [.., 16], v [.., 8]; the flash kernel needs one head dim (zero padding)."""
    pos = position(kind, True)
    q, k, _, _ = inputs(1, N_HEADS, N_HEADS, 9, 9, 16, torch.float32)
    v = torch.randn(1, N_HEADS, 9, 8, requires_grad=True)
    d_out = torch.randn(1, N_HEADS, 9, 8)
    mod = pos.score_mod()
    compare(
        lambda: sv.softmax_sdpa(q, k, v, bias=pos.score_bias()),
        lambda: attend_reference(q, k, v, normaliser=softmax(), score_mod=mod).out,
        [q, k, v, *([pos.bias] if kind == "t5" else [])],
        d_out,
        1e-4,
    )


def test_the_sdpa_form_refuses_soft_capping() -> None:
    """SDPA cannot soft-cap: the method refuses (the dispatch table never sends soft-capping there)."""
    q, k, v, _ = inputs(1, 2, 2, 5, 5, 8, torch.float32)
    with pytest.raises(ValueError, match="soft-cap"):
        softmax(softcap=5.0).attend_sdpa(q, k, v)
    plain = softmax().attend_sdpa(q, k, v, bias=position("alibi", True, 2).score_bias())
    assert plain.weights is None


@pytest.mark.parametrize(
    "attention",
    [
        dict(position="alibi"),
        dict(position="t5"),
        dict(heads="sinks", heads_args={"n_sinks": 2, "kind": "logit"}),
        dict(heads="sinks", heads_args={"n_sinks": 1, "kind": "kv"}, position="alibi"),
        dict(heads="sinks", heads_args={"n_sinks": 1, "kind": "logit"}, position="alibi", window=3),
    ],
)
@pytest.mark.parametrize("backend", ["auto", "sdpa"])
def test_a_model_on_auto_or_sdpa_matches_the_reference_backend(make_lm, attention, backend) -> None:
    fast = make_lm(backend=backend, **attention)
    slow = make_lm(backend="reference", **attention)
    slow.load_state_dict(fast.state_dict())
    for p in fast.parameters():  # lively sinks / biases
        if p.dim() <= 2 and p.shape[0] <= 32:
            torch.nn.init.normal_(p, 0, 0.5)
    slow.load_state_dict(fast.state_dict())
    tokens = torch.randint(0, 31, (2, 11))
    fast_out, slow_out = fast(tokens), slow(tokens)
    assert_relative(fast_out, slow_out, 1e-4, "logits")
    # the fused path ran: no weights were produced (a pattern hook would force the reference)
    with capture(fast, ["blocks.0.attn.hook_pattern"]) as cache:
        hooked = fast(tokens)
    assert cache["blocks.0.attn.hook_pattern"].shape == (2, 4, 11, 11)
    assert_relative(hooked, slow_out, 1e-4, "logits with a pattern hook")


def test_the_fused_layer_path_gives_no_pattern_but_the_sink_mass(make_lm) -> None:
    model = make_lm(backend="auto", heads="sinks", heads_args={"n_sinks": 2})
    attn = model.blocks[0].attn
    calls: list[int] = []
    real = attn.heads.attend

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    attn.heads.attend = counted
    model(torch.randint(0, 31, (2, 8)))
    assert not calls  # attend_sdpa, not the reference attend
    with capture(model, ["blocks.0.attn.hook_sink_mass"]) as cache:
        model(torch.randint(0, 31, (2, 8)))
    assert not calls and cache["blocks.0.attn.hook_sink_mass"].shape == (2, 4, 8)
    with capture(model, ["blocks.0.attn.hook_pattern"]):
        model(torch.randint(0, 31, (2, 8)))
    assert calls  # weights wanted: the reference


def test_a_t5_bias_too_large_to_materialise_goes_to_the_tiles(monkeypatch: pytest.MonkeyPatch) -> None:
    """Above RELATIVE_BIAS_MAX_ELEMENTS the [H, Tq, Tk] bias of a windowed or KV-cache call is not built: the
    dispatch table sends it to the O(T)-memory tiles. Tq = Tk without a window is banded (O(T) memory) at any
    length."""
    call = dispatch.Call(backend="sdpa", t_q=24, t_k=24, n_heads=N_HEADS, window=5, score_mod=True, bias="relative")
    assert dispatch.relative_bias_fits(call)
    assert dispatch.choose(call).path == "sdpa_relative"
    monkeypatch.setattr(sdpa_relative, "RELATIVE_BIAS_MAX_ELEMENTS", N_HEADS * 20 * 24 - 1)
    assert not dispatch.relative_bias_fits(call)
    assert not dispatch.relative_bias_fits(replace(call, t_q=20, window=None))  # KV cache
    assert dispatch.relative_bias_fits(replace(call, window=None))  # banded
    monkeypatch.setattr(sdpa_band, "BANDED", False)
    assert not dispatch.relative_bias_fits(replace(call, window=None))
    assert dispatch.choose(dispatch.with_kernels(call, False)).path == "chunked"
    assert dispatch.choose(dispatch.with_kernels(call, True)).path == "native"
    pos, norm = position("t5", causal=True), softmax()
    q, k, v, d_out = inputs(1, N_HEADS, N_HEADS, 24, 24, 16, torch.float32)
    got = norm.attend_chunked(q, k, v, score_mod=pos.score_mod(), bias=pos.score_bias(), native=False).out
    want = attend_reference(q, k, v, normaliser=norm, score_mod=pos.score_mod(), causal=True).out
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    g_got = torch.autograd.grad(got, [q, pos.bias], d_out)
    g_want = torch.autograd.grad(want, [q, pos.bias], d_out)
    for a, b in zip(g_got, g_want, strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("flushing", [False, True])
def test_the_denormal_setting_of_the_caller_is_restored(flushing: bool) -> None:
    if not torch.set_flush_denormal(flushing):
        pytest.skip("this CPU cannot flush denormals")
    try:
        assert sv.flushing_denormals() is flushing
        pos = position("alibi", causal=True)
        q, k, v, _ = inputs(1, N_HEADS, N_HEADS, 9, 9, 16, torch.float32)
        sv.softmax_sdpa(q, k, v, bias=pos.score_bias(), causal=True).sum().backward()
        assert sv.flushing_denormals() is flushing
    finally:
        torch.set_flush_denormal(False)


def small_buckets(bidirectional: bool):
    """T5 buckets with max_distance 6: far keys (one shared bucket per side) from |r| = 6 on (W = 6)."""
    from attnlab.position.t5 import relative_position_bucket

    return lambda r: relative_position_bucket(r, bidirectional, num_buckets=8, max_distance=6)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("t", [1, 5, 6, 7, 31, 33, 70])  # around W and the block size; several blocks
@pytest.mark.parametrize("h_kv", [N_HEADS, 2])
def test_banded_relative_bias_equals_the_dense_bias(causal: bool, t: int, h_kv: int, monkeypatch) -> None:
    """The banded T5 path (far keys through a shifted causal flash call, the band through the flash op on
    overlapping key windows, table gradient from the band's dS and the far sides' mass) equals the dense bias:
    outputs and the gradients of q, k, v and the table, with far keys on one or both sides."""
    monkeypatch.setattr(sdpa_band, "BAND_QUERIES", 4)  # many blocks and edge blocks at small T
    monkeypatch.setattr(sdpa_band, "BAND_CALL_BLOCKS", 3)  # the band's flash calls split into runs of blocks
    bucket = small_buckets(not causal)
    table = torch.randn(8, N_HEADS, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    table.requires_grad_()
    q, k, v, d_out = inputs(2, N_HEADS, h_kv, t, t, 8, torch.float64)
    plan = sdpa_band.BandPlan(bucket, t, causal, 0.3, q.device)
    if t > 6:
        assert plan.bucket_left is not None and (causal or plan.bucket_right is not None)

    def dense() -> torch.Tensor:
        r = torch.arange(t)[None, :] - torch.arange(t)[:, None]
        bias = table[bucket(r)].permute(2, 0, 1)  # [H, T, T]
        kk, vv = (repeat_kv(x, N_HEADS // h_kv) for x in (k, v))
        s = (q @ kk.transpose(-1, -2)) * 0.3 + bias
        if causal:
            s = s.masked_fill(r > 0, float("-inf"))
        return s.softmax(-1) @ vv

    compare(
        lambda: sv.relative_bias_sdpa(q, k, v, table, bucket, causal=causal, scale=0.3),
        dense,
        [q, k, v, table],
        d_out,
        1e-10,
    )


@pytest.mark.parametrize("causal", [True, False])
def test_banded_relative_bias_gradcheck_and_bf16(causal: bool, monkeypatch) -> None:
    monkeypatch.setattr(sdpa_band, "BAND_QUERIES", 4)
    bucket = small_buckets(not causal)
    table = torch.randn(8, 2, dtype=torch.float64, requires_grad=True)
    q, k, v, _ = inputs(1, 2, 1, 15, 15, 4, torch.float64)
    fn = lambda q, k, v, table: sv.relative_bias_sdpa(q, k, v, table, bucket, causal=causal)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (q, k, v, table))
    qb, kb, vb = (x.detach().bfloat16() for x in (q, k, v))
    out = sv.relative_bias_sdpa(qb, kb, vb, table.detach().bfloat16(), bucket, causal=causal)
    monkeypatch.setattr(sdpa_band, "BANDED", False)
    ref = sv.relative_bias_sdpa(q, k, v, table, bucket, causal=causal)
    assert out.dtype == torch.bfloat16
    assert_relative(out, ref, 3e-2, "bf16 output")
