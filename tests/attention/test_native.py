"""The compiled CPU kernels of the chunked backend equal the reference: outputs and every gradient.

``test_chunked_backend.py`` runs all its cases on the kernels too (its ``native`` parameter); here the shapes are
large enough for several query blocks (64 rows) and key tiles (512 keys) per call, with every variant the kernels
take: soft-capping, ALiBi (causal and symmetric), T5 (its table's gradient), windows, KV-cache decoding, GQA,
LSSA and LSSAR (integral and fractional powers), float32, bf16 and float64 gradcheck.
"""

from __future__ import annotations

import copy

import pytest
import torch

from attnlab.attention import NORMALISERS, AttentionConfig, AttentionSite, attend_reference, build_attention
from attnlab.attention.fast import native
from attnlab.position.alibi import ALiBi
from attnlab.position.t5 import T5RelativeBias
from tolerances import order_bound, scale_of


@pytest.fixture(autouse=True)
def kernels(native_kernels):  # every test here runs on the compiled kernels
    return native_kernels


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp(min=1e-30)).item()


def norm_of(name: str, heads: int = 4, d_head: int = 16, **args):
    entry = NORMALISERS.entry(name)
    site = AttentionSite(d_model=heads * d_head, n_heads=heads, seq_len=256)  # sigmoid's bias: −log 256
    return entry.factory(entry.params(**args), site)


def position_of(kind: str | None, heads: int, causal: bool):
    if kind is None:
        return None
    site = AttentionSite(d_model=heads * 16, n_heads=heads, causal=causal)
    return ALiBi(None, site) if kind == "alibi" else T5RelativeBias(None, site)


def run_both(norm, q, k, v, *, causal, window=None, position=None, dtype_ref=None):
    """(native, reference) results: (out, dq, dk, dv[, d table]) for the same upstream gradient; the reference
    in ``dtype_ref`` (on the same values) when given."""
    ref_pos = copy.deepcopy(position)
    ref_args = [q, k, v]
    if dtype_ref is not None:
        ref_args = [a.detach().to(dtype_ref).requires_grad_() for a in ref_args]
        ref_pos = ref_pos.to(dtype_ref) if ref_pos is not None else None
    results, grad_out = [], None
    for path, pos, args in (("native", position, [q, k, v]), ("reference", ref_pos, ref_args)):
        params = list(pos.parameters()) if pos is not None else []
        qp, kp, scale = norm.prepare(args[0], args[1], None)
        kwargs = dict(causal=causal, window=window, scale=scale, score_mod=pos.score_mod() if pos else None)
        if path == "native":
            bias = pos.score_bias() if pos else None
            out = norm.attend_chunked(qp, kp, args[2], **kwargs, bias=bias, raw_qk=(args[0], args[1])).out
            assert "Native" in out.grad_fn.name()
            grad_out = torch.randn_like(out)
        else:
            out = attend_reference(qp, kp, args[2], normaliser=norm, **kwargs).out
        results.append((out, *torch.autograd.grad(out, args + params, grad_out.to(out.dtype))))
    return results


CASES = {
    # name: (normaliser, args, position, causal, window, t_q, t_k, kv heads)
    "softmax-causal": ("softmax", {}, None, True, None, 601, 601, 4),
    "softcap-gqa": ("softmax", {"softcap": 5.0}, None, True, None, 601, 601, 2),
    "softcap-full-window": ("softmax", {"softcap": 5.0}, None, False, 150, 300, 300, 4),
    "alibi-causal-window": ("softmax", {}, "alibi", True, 200, 600, 600, 4),
    "alibi-symmetric": ("softmax", {}, "alibi", False, None, 300, 300, 1),
    "t5-causal": ("softmax", {}, "t5", True, None, 601, 601, 4),
    "t5-bidirectional-cross": ("softmax", {}, "t5", False, None, 130, 550, 2),
    "t5-decode": ("softmax", {"softcap": 5.0}, "t5", True, None, 70, 600, 4),
    "cog-causal-alibi": ("cog", {}, "alibi", True, None, 601, 601, 2),
    "cog-full-window": ("cog", {}, None, False, 100, 300, 300, 4),
    "sigmoid-causal-t5": ("sigmoid", {}, "t5", True, None, 601, 601, 4),
    "sigmoid-decode-window": ("sigmoid", {"bias": -2.0}, None, True, 64, 50, 600, 1),
    "lssa-causal": ("lssa", {}, None, True, None, 300, 300, 2),
    "lssar-causal": ("lssar", {}, None, True, None, 300, 300, 4),
    "lssar-window-decode": ("lssar", {}, None, True, 40, 37, 200, 1),
    "lssar-full-p2.5": ("lssar", {"power": 2.5}, None, False, None, 150, 150, 4),
    "lssar-no-length-scale": ("lssar", {"length_scale": False, "qk_norm": False}, None, True, None, 100, 100, 2),
}


@pytest.mark.parametrize("case", CASES)
def test_native_matches_the_reference_in_float32_on_many_tiles(case: str) -> None:
    name, args, pos, causal, window, t_q, t_k, kv = CASES[case]
    torch.manual_seed(1)
    norm = norm_of(name, **args)
    position = position_of(pos, 4, causal)
    q = (torch.randn(2, 4, t_q, 16) * 1.5).requires_grad_()
    k = (torch.randn(2, kv, t_k, 16) * 1.5).requires_grad_()
    v = torch.randn(2, kv, t_k, 16).requires_grad_()
    got, want = run_both(norm, q, k, v, causal=causal, window=window, position=position)
    for label, a, b in zip(["out", "dq", "dk", "dv", "d_table"], got, want, strict=False):
        assert a.dtype == b.dtype
        assert rel(a, b) <= 1e-4, f"{label}: {rel(a, b):.2e}"


@pytest.mark.parametrize("case", ["softcap-gqa", "t5-decode", "cog-full-window", "sigmoid-causal-t5", "lssar-causal"])
def test_native_in_bfloat16_is_within_rounding_of_the_float64_reference(case: str) -> None:
    name, args, pos, causal, window, t_q, t_k, kv = CASES[case]
    norm = norm_of(name, **args)
    position = position_of(pos, 4, causal)
    q = torch.randn(1, 4, t_q, 16, dtype=torch.bfloat16).requires_grad_()
    k = torch.randn(1, kv, t_k, 16, dtype=torch.bfloat16).requires_grad_()
    v = torch.randn(1, kv, t_k, 16, dtype=torch.bfloat16).requires_grad_()
    got, want = run_both(norm, q, k, v, causal=causal, window=window, position=position, dtype_ref=torch.float64)
    assert got[0].dtype == torch.bfloat16 and got[1].dtype == torch.bfloat16
    for label, a, b in zip(["out", "dq", "dk", "dv", "d_table"], got, want, strict=False):
        rms = ((a.double() - b).pow(2).mean().sqrt() / b.pow(2).mean().sqrt()).item()
        assert rms <= 2e-2, f"{label}: {rms:.2e}"


@pytest.mark.parametrize(
    ("name", "args", "pos", "causal", "window"),
    [
        ("softmax", {"softcap": 2.0}, "t5", True, None),
        ("softmax", {}, "alibi", False, 3),
        ("cog", {}, "t5", False, None),
        ("sigmoid", {"bias": -1.0}, "t5", True, 4),
        ("lssa", {}, None, False, None),
        ("lssar", {"power": 3.0}, None, True, None),
    ],
)
def test_native_gradients_match_finite_differences(name, args, pos, causal, window) -> None:
    norm = norm_of(name, heads=2, d_head=3, **args)
    position = position_of(pos, 2, causal)
    if position is not None:
        position.double()
    params = tuple(position.parameters()) if position is not None else ()
    q, k, v = (torch.randn(1, 2, 6, 3, dtype=torch.float64, requires_grad=True) for _ in range(3))
    calls = []

    def attend(q, k, v, *_):
        qp, kp, scale = norm.prepare(q, k, None)
        mod = position.score_mod() if position is not None else None
        bias = position.score_bias() if position is not None else None
        kwargs = dict(causal=causal, window=window, scale=scale, score_mod=mod, bias=bias, raw_qk=(q, k))
        out = norm.attend_chunked(qp, kp, v, **kwargs).out
        calls.append(out.grad_fn.name())
        return out

    assert torch.autograd.gradcheck(attend, (q, k, v, *params))
    assert all("Native" in c for c in calls), calls  # the compiled kernel ran, in float64


def test_the_chunked_backend_takes_the_kernels_and_threads_agree_to_rounding() -> None:
    """1 and 2 threads split the work differently; the kernel's own sums keep their order, but BLAS's (MKL's AVX2
    kernels depend on the tile's alignment) may not, so the two agree to the order bound: the longest sum is over the
    300 keys, six chained steps (scores, row sums, weights · v; ds, dq / dk, dv), and soft-capping at c = 5 bounds
    the scores, so exp turns an absolute error of the scores into at most that relative error of the weights."""
    norm = norm_of("softmax", softcap=5.0)
    q, k, v = (torch.randn(1, 4, 300, 16, requires_grad=True) for _ in range(3))
    results = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        try:
            out = norm.attend_chunked(q, k, v, causal=True).out
            assert "Native" in out.grad_fn.name()
            results.append((out, *torch.autograd.grad(out.sum(), (q, k, v))))
        finally:
            torch.set_num_threads(1)
    bound = order_bound(torch.float32, n_terms=300, depth=6, condition=5.0)
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, atol=bound * scale_of(b), rtol=0)


def test_explicit_tiles_keep_the_pytorch_form() -> None:
    from attnlab.attention.fast.chunked import SoftmaxRule, chunked_attention

    q, k, v = (torch.randn(1, 2, 20, 8, requires_grad=True) for _ in range(3))
    out, _ = chunked_attention(q, k, v, SoftmaxRule(), chunk=4, key_block=5)
    assert "Native" not in out.grad_fn.name()
    out, _ = chunked_attention(q, k, v, SoftmaxRule())
    assert "Native" in out.grad_fn.name()


@pytest.mark.parametrize(
    ("normaliser", "args", "position"),
    [("softmax", {"softcap": 30.0}, "rope"), ("softmax", {}, "alibi"), ("softmax", {}, "t5")],
)
def test_backend_auto_on_cpu_runs_soft_capping_alibi_and_t5_on_the_kernels(normaliser, args, position) -> None:
    """Backend auto: the fastest exact path on CPU (the README's speed table) — the kernels, equal to the reference."""
    site = AttentionSite(d_model=32, n_heads=4, seq_len=40)
    cfg = dict(normaliser=normaliser, normaliser_args=args, position=position)
    auto = build_attention(AttentionConfig(**cfg), site)
    ref = build_attention(AttentionConfig(**cfg, backend="reference"), site)
    ref.load_state_dict(auto.state_dict())
    x = torch.randn(2, 40, 32, requires_grad=True)
    seen = []
    auto.hook_z.register_forward_hook(lambda mod, inp, z: seen.append(z.grad_fn.name()))
    y_auto, y_ref = auto(x), ref(x)
    assert any("Native" in s for s in seen), seen
    assert rel(y_auto, y_ref) <= 1e-4
    g_auto = torch.autograd.grad(y_auto.sum(), [x, *auto.parameters()], allow_unused=True)
    g_ref = torch.autograd.grad(y_ref.sum(), [x, *ref.parameters()], allow_unused=True)
    for a, b in zip(g_auto, g_ref, strict=True):
        if b is not None:
            assert rel(a, b) <= 1e-4


def test_disabled_kernels_fall_back_to_the_pytorch_form(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(native, "ENABLED", False)
    assert native.unavailable_reason() == "disabled (ATTNLAB_NATIVE=0)"
    norm = norm_of("lssar")
    q, k, v = (torch.randn(1, 4, 30, 16, requires_grad=True) for _ in range(3))
    qp, kp, scale = norm.prepare(q, k, None)
    out = norm.attend_chunked(qp, kp, v, causal=True, scale=scale, raw_qk=(q, k)).out
    assert "Native" not in out.grad_fn.name()


@pytest.mark.parametrize("pos", ["alibi", "t5"])
def test_more_queries_than_keys_with_a_bias_reads_the_right_offsets(pos: str) -> None:
    """Non-causal cross-shaped calls (Tq > Tk): query positions run below 0, offsets up to Tq − 1."""
    norm = norm_of("softmax")
    position = position_of(pos, 4, causal=False)
    q = torch.randn(2, 4, 9, 16).requires_grad_()
    k = torch.randn(2, 4, 5, 16).requires_grad_()
    v = torch.randn(2, 4, 5, 16).requires_grad_()
    got, want = run_both(norm, q, k, v, causal=False, position=position)
    for label, a, b in zip(["out", "dq", "dk", "dv", "d_table"], got, want, strict=False):
        assert rel(a, b) <= 1e-4, f"{label}: {rel(a, b):.2e}"


@pytest.mark.parametrize("name", ["lssa", "lssar"])
def test_softplus_blocks_that_see_no_key_give_zero_rows(name: str) -> None:
    """A non-causal window with far more queries than keys: whole query blocks see nothing (0 / (0 + ε) = 0, and 0
    gradients, where the dense reference's log N = −inf gives NaN). The rows that see keys equal the reference on
    those rows alone (queries are aligned to the last key positions, so slicing keeps their positions)."""
    norm = norm_of(name)
    q = torch.randn(1, 4, 80, 16).requires_grad_()
    k = torch.randn(1, 4, 4, 16).requires_grad_()
    v = torch.randn(1, 4, 4, 16).requires_grad_()
    grad_out = torch.randn(1, 4, 80, 16)
    qp, kp, scale = norm.prepare(q, k, None)
    out = norm.attend_chunked(qp, kp, v, causal=False, window=2, scale=scale, raw_qk=(q, k)).out
    assert "Native" in out.grad_fn.name()
    dq, dk, dv = torch.autograd.grad(out, (q, k, v), grad_out)
    assert torch.equal(out[:, :, :75], torch.zeros_like(out[:, :, :75]))
    assert torch.equal(dq[:, :, :75], torch.zeros_like(dq[:, :, :75]))
    q_tail = q.detach()[:, :, 75:].requires_grad_()
    qp, kp, scale = norm.prepare(q_tail, k, None)
    ref = attend_reference(qp, kp, v, normaliser=norm, causal=False, window=2, scale=scale).out
    r_dq, r_dk, r_dv = torch.autograd.grad(ref, (q_tail, k, v), grad_out[:, :, 75:])
    for label, a, b in [("out", out[:, :, 75:], ref), ("dq", dq[:, :, 75:], r_dq), ("dk", dk, r_dk), ("dv", dv, r_dv)]:
        assert rel(a, b) <= 1e-4, f"{label}: {rel(a, b):.2e}"


def test_calls_the_kernels_do_not_cover_keep_the_pytorch_form() -> None:
    """Softmax on normalised q, k (qk_norm) and broadcast batches are the PyTorch form's; LSSA without a length
    scale needs no head dimension."""
    from attnlab.attention.fast.chunked import SoftmaxRule, SoftplusRule, chunked_attention

    q, k, v = (torch.randn(2, 2, 20, 8, requires_grad=True) for _ in range(3))
    out, _ = chunked_attention(q, k, v, SoftmaxRule(), qk_norm=True)
    assert "Native" not in out.grad_fn.name()
    out, _ = chunked_attention(q, k[:1], v[:1], SoftmaxRule())
    assert "Native" not in out.grad_fn.name()
    out, _ = chunked_attention(q, k, v, SoftplusRule(d_head=0, length_scale=False, eps=1e-8), qk_norm=True)
    assert "Native" in out.grad_fn.name()
