"""The chunked backend equals the reference: outputs and every gradient, in tiles, never a T×T tensor.

Small ``chunk`` / ``key_block`` sizes that do not divide T make every call use several query blocks and key
tiles, partly masked tiles, and (with a window) rows that see nothing in some tile; ``whole_rows`` switches
between that online path and the one-tile-per-block path that rows short enough take.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from attnlab.attention import NORMALISERS, AttentionConfig, AttentionSite, attend_reference, build_attention
from attnlab.attention.fast import chunked, native
from attnlab.attention.fast.chunked import PointwiseRule, chunked_attention
from attnlab.errors import ConfigError
from attnlab.hook_points import capture
from attnlab.position.alibi import ALiBi
from attnlab.position.t5 import T5RelativeBias
from tolerances import lm_atol, order_bound, scale_of

CHUNKED = ["softmax", "cog", "sigmoid", "lssa", "lssar", "clipped_softmax", "relu", "relu2"]
SITE = AttentionSite(d_model=32, n_heads=4, seq_len=16)  # d_head 8
# clipped softmax: clip at both ends with these random scores; relu2: the fixed training length as L
ARGS = {"clipped_softmax": {"gamma": -0.1, "zeta": 1.1}, "relu2": {"length": "seq_len"}}
# (t_q, t_k, causal, window, kv heads): odd lengths, one token, decoding (Tq < Tk), cross (Tq ≠ Tk), GQA, windows
SHAPES = {
    "T13-causal": (13, 13, True, None, 4),
    "T13-full-gqa": (13, 13, False, None, 2),
    "T1": (1, 1, True, None, 4),
    "decode-3of11-mqa": (3, 11, True, None, 1),
    "cross-5x9": (5, 9, False, None, 4),
    "T13-window4": (13, 13, True, 4, 2),
    "T12-full-window3": (12, 12, False, 3, 4),
}


def normaliser(name: str, site: AttentionSite = SITE) -> torch.nn.Module:
    entry = NORMALISERS.entry(name)
    return entry.factory(entry.params(**ARGS.get(name, {})), site)


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |a − e| / max |e|: the error relative to the tensor's scale."""
    return ((actual.double() - expected.double()).abs().max() / expected.double().abs().max().clamp(min=1e-30)).item()


def rms_relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    a, e = actual.double(), expected.double()
    return ((a - e).pow(2).mean().sqrt() / e.pow(2).mean().sqrt().clamp(min=1e-30)).item()


def inputs(t_q: int, t_k: int, kv_heads: int, dtype=torch.float32, scale: float = 1.0):
    q = (torch.randn(2, 4, t_q, 8, dtype=dtype) * scale).requires_grad_()
    k = (torch.randn(2, kv_heads, t_k, 8, dtype=dtype) * scale).requires_grad_()
    v = torch.randn(2, kv_heads, t_k, 8, dtype=dtype).requires_grad_()
    return q, k, v


# Two float32 orders of one attention, relative to each tensor's scale: forward (scores over d_head = 8, the rows'
# sums and the output over ≤ 13 keys) and backward (dP, the rows' dot products, dq, dk, dv): 8 steps of ≤ 13 terms;
# exp turns a score's absolute error into a relative one, and the scores of inputs of scale 1.5 reach |s| ≈ 8.
FLOAT32_TOLERANCE = order_bound(torch.float32, n_terms=13, depth=8, condition=8.0)  # 9.9e-5


def compare(
    name,
    q,
    k,
    v,
    causal,
    window,
    score_mod=None,
    extra=(),
    tolerance=FLOAT32_TOLERANCE,
    metric=relative_error,
    truth=False,
):
    """The chunked output and gradients against the reference's, in the same dtype (``truth``: against the
    reference in float64 on the same values, the dtypes against the inputs')."""
    norm = normaliser(name)
    args = [q, k, v, *extra]
    grad_out = None
    outs, grads = [], []
    for path in ("reference", "chunked"):
        if path == "reference" and truth:
            args_64 = [a.detach().double().requires_grad_() for a in args]
            q_r, k_r, v_r = args_64[:3]
        else:
            q_r, k_r, v_r = q, k, v
        qp, kp, scale = norm.prepare(q_r, k_r, None)
        kwargs = dict(causal=causal, window=window, score_mod=score_mod, scale=scale)
        if path == "reference":
            out = attend_reference(qp, kp, v_r, normaliser=norm, **kwargs).out
            grad_out = torch.randn_like(out)
            grads.append(torch.autograd.grad(out, args_64 if truth else args, grad_out))
        else:
            out = norm.attend_chunked(qp, kp, v, **kwargs, raw_qk=(q_r, k_r)).out
            grads.append(torch.autograd.grad(out, args, grad_out.to(out.dtype)))
        outs.append(out)
    assert outs[1].dtype == v.dtype and outs[1].shape == outs[0].shape
    assert metric(outs[1], outs[0]) <= tolerance, f"output: {metric(outs[1], outs[0]):.2e}"
    for label, got, want, arg in zip(["q", "k", "v", "param"], grads[1], grads[0], args, strict=False):
        assert got.dtype == arg.dtype
        assert metric(got, want) <= tolerance, f"grad {label}: {metric(got, want):.2e}"


@pytest.fixture(autouse=True)
def small_tiles(monkeypatch: pytest.MonkeyPatch) -> None:
    """Blocks of 4 queries and tiles of 3 keys: several partly masked tiles per call (the PyTorch form: the
    native kernels are off unless ``whole_rows`` asks for them)."""
    monkeypatch.setattr(chunked, "DEFAULT_CHUNK", 4)
    monkeypatch.setattr(chunked, "DEFAULT_KEY_BLOCK", 3)
    monkeypatch.setattr(chunked, "DEFAULT_WHOLE_ROWS", 0)
    monkeypatch.setattr(native, "ENABLED", False)


@pytest.fixture(params=[0, 64, "native"], ids=["tiles", "rows", "native"])
def whole_rows(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> int | str:
    """The chunked backend's three implementations: tiles of 3 keys (the online, multi-pass path), every row in one
    tile (the fused one-pass path), and the compiled CPU kernels (softmax, LSSA, LSSAR; the others keep the
    PyTorch form there)."""
    if request.param == "native":
        request.getfixturevalue("native_kernels")
        monkeypatch.setattr(native, "ENABLED", True)
    else:
        monkeypatch.setattr(chunked, "DEFAULT_WHOLE_ROWS", request.param)
    return request.param


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", CHUNKED)
def test_chunked_matches_reference_in_float32(name: str, shape: str, whole_rows: int) -> None:
    t_q, t_k, causal, window, kv_heads = SHAPES[shape]
    compare(name, *inputs(t_q, t_k, kv_heads, scale=1.5), causal=causal, window=window)


@pytest.mark.parametrize("position", ["alibi", "t5"])
@pytest.mark.parametrize("name", ["softmax", "cog", "sigmoid", "clipped_softmax"])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
def test_chunked_applies_position_score_mods_and_trains_the_t5_table(
    name: str, position: str, causal: bool, whole_rows: int
) -> None:
    site = AttentionSite(d_model=32, n_heads=4, causal=causal)
    pos = ALiBi(None, site) if position == "alibi" else T5RelativeBias(None, site)
    extra = tuple(pos.parameters())  # T5's bias table: its gradient is compared too
    compare(name, *inputs(11, 11, 2, scale=1.5), causal=causal, window=None, score_mod=pos.score_mod(), extra=extra)


@pytest.mark.parametrize("name", CHUNKED)
def test_chunked_matches_reference_in_bfloat16(name: str, whole_rows: int) -> None:
    """bf16 inputs are computed in float32: the chunked results are within bf16 rounding of the float64 reference.

    (Not against the bf16 reference: LSSA's prepare normalises q, k in bf16 there, and LSSAR's power 15 makes
    that rounding a few percent of its gradients; the chunked kernel normalises the bf16 inputs in float32.)
    """
    compare(
        name,
        *inputs(13, 13, 2, dtype=torch.bfloat16),
        causal=True,
        window=None,
        metric=rms_relative_error,
        tolerance=2e-2,
        truth=True,
    )


@pytest.mark.parametrize(
    ("name", "causal", "window"),
    [(n, True, None) for n in CHUNKED] + [("softmax", False, 2), ("sigmoid", True, 2), ("lssar", False, None)],
)
def test_chunked_gradients_match_finite_differences(
    name: str, causal: bool, window: int | None, whole_rows: int
) -> None:
    norm = normaliser(name, AttentionSite(d_model=6, n_heads=2, seq_len=5))
    q, k, v = (torch.randn(1, 2, 5, 3, dtype=torch.float64, requires_grad=True) for _ in range(3))

    def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        qp, kp, scale = norm.prepare(q, k, None)
        return norm.attend_chunked(qp, kp, v, causal=causal, window=window, scale=scale, raw_qk=(q, k)).out

    assert torch.autograd.gradcheck(attend, (q, k, v))


def test_score_mod_tensor_gradients_match_finite_differences() -> None:
    """A learnable bias per head and clipped distance (T5-like), captured by the score_mod, gets its gradient."""
    table = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    q, k, v = (torch.randn(1, 2, 6, 3, dtype=torch.float64, requires_grad=True) for _ in range(3))

    def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        def bias(s, b, h, q_idx, kv_idx):
            return s + table[h, (q_idx - kv_idx).clamp(0, 3)]

        return chunked_attention(q, k, v, chunked.SoftmaxRule(), score_mod=bias)[0]

    assert torch.autograd.gradcheck(attend, (q, k, v, table))


@pytest.mark.parametrize("name", ["lssa", "lssar"])
def test_qk_norm_in_the_kernel_matches_f_normalize_on_tiny_and_zero_rows(name: str, whole_rows: int) -> None:
    """F.normalize's ε = 1e-12: a zero row, rows below ε (x / ε, no projection in the gradient) and a small row."""
    q, k, v = (t.detach() for t in inputs(13, 13, 2, dtype=torch.float64, scale=1.5))
    q[0, 1, 2], q[1, 0, 5] = 0.0, q[1, 0, 5] * 1e-14  # ‖q‖ = 0 and < ε
    q[0, 2, 7] *= 1e-6
    k[0, 1, 0], k[1, 1, 4] = 0.0, k[1, 1, 4] * 1e-14
    k[0, 0, 9] *= 1e-7
    compare(name, q.requires_grad_(), k.requires_grad_(), v.requires_grad_(), causal=True, window=None, tolerance=1e-9)


@pytest.mark.parametrize("name", ["lssa", "lssar"])
def test_lssa_chunked_keeps_no_normalised_copy_for_the_backward(name: str) -> None:
    """Given the q, k from before prepare (``raw_qk``, as the layer hands them over), the kernel saves the raw q, k
    and normalises them itself: prepare's F.normalize(q), F.normalize(k) are not saved. Without them, the prepared
    pair is attended as given."""
    q, k, v = inputs(13, 13, 2)
    norm = normaliser(name)
    qp, kp, scale = norm.prepare(q, k, None)
    saved: list[torch.Tensor] = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out = norm.attend_chunked(qp, kp, v, causal=True, scale=scale, raw_qk=(q, k)).out
    pointers = {t.untyped_storage().data_ptr() for t in saved}
    assert {q.data_ptr(), k.data_ptr()} <= pointers
    assert not {qp.data_ptr(), kp.data_ptr()} & pointers
    expected = attend_reference(qp, kp, v, normaliser=norm, causal=True, scale=scale).out
    # The two orders of one float32 computation: l2 norms and scores (8 terms), the rows' sums and the output (13
    # keys), 6 steps; LSSAR's r = (N·A − 1)^15 multiplies the relative error of N·A − 1 by 15.
    bound = order_bound(torch.float32, n_terms=13, depth=6, condition=15.0 if name == "lssar" else 1.0)
    torch.testing.assert_close(out, expected, atol=bound * scale_of(expected), rtol=0)
    as_given = norm.attend_chunked(qp, kp, v, causal=True, scale=scale).out
    torch.testing.assert_close(as_given, expected, atol=bound * scale_of(expected), rtol=0)
    with torch.no_grad():
        qp[:, :, 3] *= 2.0  # no longer a unit vector: without raw_qk the kernel attends this q, not F.normalize(q)
    changed = norm.attend_chunked(qp, kp, v, causal=True, scale=scale).out
    want = attend_reference(qp, kp, v, normaliser=norm, causal=True, scale=scale).out
    torch.testing.assert_close(changed, want, atol=bound * scale_of(want), rtol=0)
    assert not torch.allclose(changed, expected)


class LargestTensor(TorchDispatchMode):
    """Records the largest number of elements any op produced."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, tuple | list) else [out]:
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


@pytest.mark.parametrize("name", CHUNKED)
def test_chunked_never_builds_a_t_by_t_tensor(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(chunked, "DEFAULT_CHUNK", 16)
    monkeypatch.setattr(chunked, "DEFAULT_KEY_BLOCK", 32)
    monkeypatch.setattr(chunked, "DEFAULT_WHOLE_ROWS", 32)
    b, h, t = 1, 2, 256
    q, k, v = (torch.randn(b, h, t, 8, requires_grad=True) for _ in range(3))
    norm = normaliser(name, AttentionSite(d_model=16, n_heads=2, seq_len=t))
    with LargestTensor() as probe:
        qp, kp, scale = norm.prepare(q, k, None)  # as the layer calls it (LSSA: the kernel normalises q, k)
        out = norm.attend_chunked(qp, kp, v, causal=True, scale=scale, raw_qk=(q, k)).out
        out.sum().backward()
    tile, qkv = b * h * 16 * 32, b * h * t * 8
    assert probe.largest <= max(tile, qkv), f"a tensor of {probe.largest} elements (one T×T head: {t * t})"
    with LargestTensor() as dense:
        attend_reference(q, k, v, normaliser=norm, causal=True).out.sum().backward()
    assert dense.largest >= b * h * t * t  # the probe sees the reference's score matrix


@pytest.mark.parametrize("name", CHUNKED)
def test_model_with_the_chunked_backend_equals_the_reference_and_decodes_with_the_cache(make_lm, name: str) -> None:
    reference = make_lm(normaliser=name, normaliser_args=ARGS.get(name, {}), position="rope", backend="reference")
    fast = make_lm(normaliser=name, normaliser_args=ARGS.get(name, {}), position="rope", backend="chunked")
    fast.load_state_dict(reference.state_dict())
    tokens = torch.randint(0, 31, (2, 11))
    full = reference(tokens)
    # float32, the chunked backend's own dtype here: two orders of one computation, lm_atol (tests/tolerances.py);
    # LSSAR's (N·A − 1)^15 multiplies the relative error of N·A − 1 by 15.
    atol = lm_atol(full, condition=15.0 if name == "lssar" else 1.0)
    torch.testing.assert_close(fast(tokens), full, atol=atol, rtol=0)
    cache = fast.new_cache()
    steps = torch.cat([fast(tokens[:, :6], cache), *(fast(tokens[:, t : t + 1], cache) for t in range(6, 11))], dim=1)
    torch.testing.assert_close(steps, full, atol=atol, rtol=0)


def test_capturing_the_pattern_switches_a_chunked_layer_to_the_reference(make_lm) -> None:
    model = make_lm(normaliser="sigmoid", backend="chunked")
    tokens = torch.randint(0, 31, (1, 9))
    plain = model(tokens)
    with capture(model, ["blocks.0.attn.hook_pattern"]) as cache:
        captured = model(tokens)
    assert cache["blocks.0.attn.hook_pattern"].shape == (1, 4, 9, 9)
    torch.testing.assert_close(captured, plain, atol=lm_atol(plain), rtol=0)  # two orders (tests/tolerances.py)


def test_softcap_bounds_the_logits_and_disables_sdpa() -> None:
    norm = normaliser("softmax")
    capped = NORMALISERS.entry("softmax").factory(NORMALISERS.entry("softmax").params(softcap=2.0), SITE)
    scores = torch.tensor([[[[0.0, 10.0, -10.0]]]])
    expected = (2.0 * torch.tanh(scores / 2.0)).softmax(-1)
    torch.testing.assert_close(capped(scores, None), expected)
    assert not torch.allclose(norm(scores, None), expected)
    module = build_attention(AttentionConfig(normaliser_args={"softcap": 2.0}), SITE)
    assert module.choose_path(t_q=13).path in ("native", "reference")  # SDPA cannot soft-cap
    compare_softcap = chunked.SoftmaxRule(softcap=2.0)
    q, k, v = inputs(13, 13, 4, scale=3.0)
    got = chunked_attention(q, k, v, compare_softcap)[0]
    torch.testing.assert_close(got, attend_reference(q, k, v, normaliser=capped).out, atol=1e-5, rtol=1e-5)


def test_bad_calls_are_rejected_in_one_line() -> None:
    q, k, v = inputs(5, 3, 4)
    rule = PointwiseRule("sigmoid")
    with pytest.raises(ValueError, match="causal attention needs Tq <= Tk"):
        chunked_attention(q, k, v, rule, causal=True)
    with pytest.raises(ValueError, match="window=0"):
        chunked_attention(q, q, q, rule, window=0)
    with pytest.raises(ValueError, match="unknown"):
        PointwiseRule("tanh")
    with pytest.raises(ConfigError, match="backend='chunked': not available for normaliser 'kernel_rpe_fft'"):
        AttentionConfig(normaliser="kernel_rpe_fft", backend="chunked")
    with pytest.raises(ValueError, match="document masks"):
        chunked_attention(q, q, q, chunked.SoftplusRule(8, True, 1e-8), documents=torch.zeros(2, 5, dtype=torch.long))


def test_a_score_mod_that_hides_its_parameters_is_refused() -> None:
    table = torch.nn.Linear(1, 4)

    def hidden(s, b, h, q_idx, kv_idx):
        return s + holder["layer"].weight[h, 0]

    holder = {"layer": table}
    q, k, v = inputs(5, 5, 4)
    with pytest.raises(ValueError, match="not in its closure"):
        chunked_attention(q, k, v, chunked.SoftmaxRule(), score_mod=hidden)


@pytest.mark.parametrize("power", [0.5, 1.0, 2.0])
def test_lssar_gradients_with_a_power_at_most_one(power: float, whole_rows: int) -> None:
    """ReLU(x)^p has zero derivative where x ≤ 0 for every p (not p·0^(p−1), which is 1 or inf for p ≤ 1)."""
    norm = NORMALISERS.entry("lssar").factory(NORMALISERS.entry("lssar").params(power=power), SITE)
    # float64: the check is of the derivative's form, and in float32 it could not be bounded. For p < 1 the
    # gradient goes through p·x^(p−1) at x = N·A − 1, which cancels (N·A ≈ 1), so the rounding δx ≈ u of x is
    # amplified by |p − 1|·δx / x; the smallest positive x a draw of ~700 entries gives is ~1e-4, i.e. ×1e4 (float32:
    # 1.2e-4 of the gradient's scale on an AMD EPYC, 8.5e-5 here). The rest is order_bound's chain: forward and
    # backward through the l2 norms (8 terms), scores, the two row sums and the output (13 keys each), 12 steps.
    # A wrong derivative where x ≤ 0 (p·0^(p−1): inf for p < 1, 1 for p = 1) is an O(1) error.
    q, k, v = inputs(13, 13, 2, dtype=torch.float64, scale=1.5)
    grad_out = torch.randn(2, 4, 13, 8, dtype=torch.float64)
    bound = order_bound(torch.float64, n_terms=13, depth=12, condition=1e4 if power < 1 else 1.0)
    results = []
    for path in ("reference", "chunked"):
        qp, kp, scale = norm.prepare(q, k, None)
        kwargs = dict(causal=True, scale=scale)
        attend = attend_reference(qp, kp, v, normaliser=norm, **kwargs) if path == "reference" else None
        out = attend.out if attend is not None else norm.attend_chunked(qp, kp, v, **kwargs, raw_qk=(q, k)).out
        results.append((out, *torch.autograd.grad(out, (q, k, v), grad_out)))
    for label, got, want in zip(["out", "q", "k", "v"], results[1], results[0], strict=True):
        assert relative_error(got, want) <= bound, f"{label}: {relative_error(got, want):.2e} > {bound:.2e}"


@pytest.mark.parametrize("shape", SHAPES)
def test_clipped_softmax_without_a_lower_clip_masks_hidden_keys(shape: str, whole_rows: int, monkeypatch) -> None:
    """γ = 0: hidden keys have y = γ = 0, inside the clip's pass-through range; their gradient must still vanish
    (it does through p = 0: the chunked kernel applies no mask to the clipped weights)."""
    monkeypatch.setitem(ARGS, "clipped_softmax", {"gamma": 0.0, "zeta": 1.1})
    t_q, t_k, causal, window, kv_heads = SHAPES[shape]
    compare("clipped_softmax", *inputs(t_q, t_k, kv_heads, scale=1.5), causal=causal, window=window)
