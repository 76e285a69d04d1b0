"""The Triton kernels (``attnlab.attention.fast.triton``) equal the reference: outputs and every gradient.

They run here under Triton's interpreter, on CPU tensors, so CI checks them without a GPU. Triton decides
whether a kernel is interpreted when the kernel is defined, from ``TRITON_INTERPRET``; so the ``kernels``
fixture sets it, imports the kernel module (which defines them), and restores the variable: nothing else in the
test process sees it (triton reads it again while kernels run, so it stays set for this module's tests), and
the kernels stay interpreted for the rest of the process. (Outside the tests: set
``TRITON_INTERPRET=1`` before anything imports triton.) If something imported the kernels before, compiled for a
GPU, the tests here skip and say so.

Shapes are small and odd (T = 1, 7, 33, 70), with tiles of 16 so that every call has several query blocks and
key tiles, partly masked tiles, padding rows and columns, and (with a window) tiles some rows see nothing of.

Bounds. Each kernel computes in float32 what the reference computes in float64 on the same values. The forward error
of a float32 sum or dot product of n terms is at most n·u·Σ|terms| with u = 2⁻²⁴ (Higham, *Accuracy and Stability of
Numerical Algorithms*, 2nd ed., §3.1); every quantity here chains a dot product over the head dimension D (scores,
dw = dO·v) with sums over at most Tk keys (outputs, row statistics, dk, dv) or Tq rows, so errors are bounded by (D
+ Tk + Tq)·u relative to the magnitudes involved, which are the tensors' own scale (weights are ≤ 1 in magnitude and
rows of Cog, softmax, LSSA sum to at most 1). ``AMPLIFY`` multiplies that by how much a rule magnifies a score
error: LSSA multiplies cosine scores by c = log d · log N ≤ log 32 · log 70 < 15, and LSSAR raises ReLU(N·A − 1),
whose relative error is another factor N larger, to the power p = 15. The factor 8 covers the few ulps of exp, log
and sigmoid and the chain score → weight → output → gradient. bf16 inputs are rounded to 8 significant bits (u =
2⁻⁸) before they reach the kernel and when the weights and score gradients meet the second matrix product (as in
FlashAttention), so the bf16 case is compared in RMS against the float64 reference on the same bf16 values, within
4u (fp16: u = 2⁻¹¹); the backward's D_i = dO_i · o_i reads the output as stored, in bf16 (as FlashAttention does),
and LSSAR's score gradient multiplies that rounding (u/2) by its power p = 15, hence p·u/2 more there.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
import torch

from attnlab.attention import NORMALISERS, AttentionSite, attend_reference
from attnlab.attention.fast.chunked import PointwiseRule, SoftmaxRule
from attnlab.attention.fast.triton import attend_triton, available, kernel_spec, supports, triton_attention

# not imported here: triton must see TRITON_INTERPRET=1 when it is first imported (the ``kernels`` fixture)
pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("triton") is None, reason="triton is not installed (pip install 'attnlab[gpu]')"
)

FUNCTION = "attnlab.attention.fast.triton.function"
BLOCK = 16  # query rows and key columns per tile
RULES = ["sigmoid", "cog", "lssa", "clipped_softmax", "lssar"]
# clipped softmax clips at both ends with these scores; everything else: the registry's defaults
ARGS = {"clipped_softmax": {"gamma": -0.1, "zeta": 1.1}}
# (t_q, t_k, causal, window, kv heads) with 4 query heads: odd lengths, one token, decoding (Tq < Tk), cross
# attention (Tq ≠ Tk, not causal), GQA and MQA, causal and two-sided windows
SHAPES = {
    "T33-causal-gqa": (33, 33, True, None, 2),
    "T70-full": (70, 70, False, None, 4),
    "T1": (1, 1, True, None, 4),
    "decode-7of70-mqa": (7, 70, True, None, 1),
    "cross-7x33": (7, 33, False, None, 2),
    "T33-window5-gqa": (33, 33, True, 5, 2),
    "T33-full-window4": (33, 33, False, 4, 4),
}
U32 = 2.0**-24
U16 = 2.0**-8
UF16 = 2.0**-11
AMPLIFY = {"lssa": 15.0, "lssar": 15.0 * 15.0}
HALF_EXTRA = {"lssar": 15.0 / 2}  # p·u/2: D = dO·o from the bf16 output, weighted by p in LSSAR's score gradient


@pytest.fixture(scope="module")
def kernels() -> Iterator[ModuleType]:
    """The kernel module, defined under Triton's interpreter; TRITON_INTERPRET is set for this module's tests only."""
    if "triton" in sys.modules and FUNCTION not in sys.modules:
        pytest.skip("triton was imported before these tests (without TRITON_INTERPRET=1?): its kernels cannot run here")
    previous = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        module = importlib.import_module(FUNCTION)
        if not module.INTERPRETED:
            pytest.skip("the Triton kernels were already defined for a GPU in this process: none can run interpreted")
        yield module
    finally:
        if previous is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = previous


def site(d_head: int) -> AttentionSite:
    return AttentionSite(d_model=4 * d_head, n_heads=4, seq_len=64)


def normaliser(name: str, d_head: int, **params: object) -> torch.nn.Module:
    entry = NORMALISERS.entry(name)
    return entry.factory(entry.params(**{**ARGS.get(name, {}), **params}), site(d_head))


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |a − e| / max(max |e|, 1): the error relative to the tensor's scale, or to the inputs' (q, k, v and dO
    are N(0, 1)) for a tensor that cancels far below it (Cog's dq at T = 1 is exactly 0)."""
    return ((actual.double() - expected.double()).abs().max() / expected.double().abs().max().clamp(min=1.0)).item()


def rms_relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    a, e = actual.double(), expected.double()
    return ((a - e).pow(2).mean().sqrt() / e.pow(2).mean().sqrt().clamp(min=1e-30)).item()


def compare(
    name: str,
    t_q: int,
    t_k: int,
    causal: bool,
    window: int | None,
    kv_heads: int,
    *,
    d_head: int = 16,
    batch: int = 1,
    dtype: torch.dtype = torch.float32,
    params: dict[str, object] | None = None,
) -> None:
    """The kernel's output and q, k, v gradients against the float64 reference on the same values."""
    norm = normaliser(name, d_head, **(params or {}))
    q = torch.randn(batch, 4, t_q, d_head).to(dtype)
    k = torch.randn(batch, kv_heads, t_k, d_head).to(dtype)
    v = torch.randn(batch, kv_heads, t_k, d_head).to(dtype)
    results = []
    grad_out = None
    for exact in (True, False):
        args = [x.detach().double() if exact else x.detach() for x in (q, k, v)]
        for x in args:
            x.requires_grad_()
        qp, kp, scale = norm.prepare(args[0], args[1], None)
        if exact:
            out = attend_reference(qp, kp, args[2], normaliser=norm, causal=causal, window=window, scale=scale).out
            grad_out = torch.randn_like(out)
        else:
            tiles = {"block_m": BLOCK, "block_n": BLOCK}
            out = attend_triton(norm, qp, kp, args[2], causal=causal, window=window, scale=scale, **tiles).out
        results.append((out, *torch.autograd.grad(out, args, grad_out.to(out.dtype))))
    if dtype == torch.float32:
        bound, metric = 8 * (d_head + t_k + t_q) * U32 * AMPLIFY.get(name, 1.0), relative_error
    else:
        unit = U16 if dtype == torch.bfloat16 else UF16
        bound, metric = (4 + HALF_EXTRA.get(name, 0.0)) * unit, rms_relative_error
    for label, want, got, arg in zip(["out", "dq", "dk", "dv"], *results, [v, q, k, v], strict=True):
        assert got.dtype == arg.dtype and got.shape == want.shape, label
        error = metric(got, want)
        assert error <= bound, f"{label}: {error:.2e} > {bound:.2e}"


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("name", RULES)
def test_kernel_matches_reference(kernels: ModuleType, name: str, shape: str) -> None:
    compare(name, *SHAPES[shape])


@pytest.mark.parametrize("name", RULES)
def test_kernel_matches_reference_with_batch_and_d32(kernels: ModuleType, name: str) -> None:
    compare(name, 33, 33, True, None, 2, d_head=32, batch=2)


@pytest.mark.parametrize("name", RULES)
def test_kernel_matches_reference_in_bfloat16(kernels: ModuleType, name: str) -> None:
    """bf16 inputs, accumulated in float32: within a few bf16 roundings (RMS) of the float64 reference."""
    compare(name, 33, 33, True, None, 2, dtype=torch.bfloat16)


@pytest.mark.parametrize("name", ["sigmoid", "lssar"])
def test_kernel_matches_reference_in_float16(kernels: ModuleType, name: str) -> None:
    compare(name, 33, 33, False, 6, 2, dtype=torch.float16)


@pytest.mark.parametrize("name", ["lssa", "lssar"])
def test_softplus_kernels_without_cosines_or_length_scale(kernels: ModuleType, name: str) -> None:
    """qk_norm off (scaled dot products, not normalised in the kernel) and length scaling off (c = 1)."""
    compare(name, 33, 33, True, None, 2, params={"qk_norm": False, "length_scale": False})


def test_softmax_kernel_matches_reference(kernels: ModuleType) -> None:
    """The unsigned softmax rule (Cog's kernel with the sign off) as well."""
    compare("softmax", *SHAPES["T33-window5-gqa"])


def test_sigmoid_matches_reference_at_one_tile_of_64(kernels: ModuleType) -> None:
    """The GPU's default tile (64 × 64), one query block and one key tile per head."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 2, 37, 16, dtype=torch.float64) for _ in range(3))
    norm = normaliser("sigmoid", 16)
    got = triton_attention(norm.chunked_rule(), q.float(), k.float(), v.float())
    want = attend_reference(q, k, v, normaliser=norm).out
    assert relative_error(got, want) <= 8 * (16 + 37) * U32


def test_unsupported_rules_and_inputs_are_one_line_errors(kernels: ModuleType) -> None:
    q = torch.randn(1, 2, 5, 16)
    with pytest.raises(ValueError, match=r"rule=SoftmaxRule\(signed=False, softcap=30.0\) has no Triton kernel"):
        triton_attention(SoftmaxRule(softcap=30.0), q, q, q)
    with pytest.raises(ValueError, match=r"rule=PointwiseRule.*kind='relu'"):
        kernel_spec(PointwiseRule("relu"))
    assert not supports(PointwiseRule("relu")) and supports(PointwiseRule("sigmoid", bias=-2.0))
    with pytest.raises(ValueError, match=r"q.dtype=torch.float64 has no Triton kernel \(allowed: float32"):
        triton_attention(SoftmaxRule(signed=True), q.double(), q.double(), q.double())
    with pytest.raises(ValueError, match="block_m=24 must be a power of two >= 16"):
        triton_attention(SoftmaxRule(signed=True), q, q, q, block_m=24)
    with pytest.raises(ValueError, match="window=0 must be a positive number of keys"):
        triton_attention(SoftmaxRule(signed=True), q, q, q, window=0)


def test_available_says_why_not(kernels: ModuleType) -> None:
    assert available("cpu") is None  # the interpreter runs CPU tensors
    assert "meta" in (available("meta") or "")


def test_lssa_scores_are_cosines_whatever_the_norms(kernels: ModuleType) -> None:
    """LSSA's q, k are l2-normalised before the kernel: scaling a query row or a key changes nothing."""
    norm = normaliser("lssa", 16)
    q, k, v = (torch.randn(1, 4, 9, 16) for _ in range(3))
    scaled_q, scaled_k = q.clone(), k.clone()
    scaled_q[0, 1, 3] *= 1e3
    scaled_k[0, 2, 5] *= 1e-3
    pairs = ((q, k), (scaled_q, scaled_k))
    outs = [attend_triton(norm, *norm.prepare(a, b, None)[:2], v, scale=1.0).out for a, b in pairs]
    assert relative_error(outs[1], outs[0]) <= 8 * (16 + 9) * U32 * AMPLIFY["lssa"]
    assert math.isfinite(outs[0].abs().sum().item())


COMPILE = """
from attnlab.attention.fast.triton.aot import SPECS, compile_kernels
for c in compile_kernels(tuple(s for s in SPECS if s.name in ("sigmoid", "lssar")), arch=90):
    print(c.rule, c.kernel, c.shared_bytes)
"""


def test_kernels_compile_for_an_h100(tmp_path: Path) -> None:
    """The interpreter never runs Triton's compiler: compile sigmoid's and LSSAR's kernels (the simplest and the
    most involved; ``python -m attnlab.attention.fast.triton.aot`` compiles every rule) to sm_90 cubins, in a
    process without TRITON_INTERPRET and with a fresh cache, so nothing is taken from an earlier build."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(TRITON_CACHE_DIR=str(tmp_path), TRITON_DEFAULT_FP_FUSION="1")
    done = subprocess.run([sys.executable, "-c", COMPILE], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.split("\n")
    for rule in ("sigmoid", "lssar"):
        for kernel in ("attn_fwd", "attn_bwd_dq", "attn_bwd_dkdv"):
            assert any(line.startswith(f"{rule} {kernel} ") for line in lines), done.stdout


def test_lssar_peaked_long_row_does_not_overflow(kernels: ModuleType) -> None:
    """One key aligned with the query, 599 opposite: A ≈ 1 on one key, x = N·A − 1 ≈ 599 and x¹⁵ ≈ 5e41, beyond
    float32; the kernel works in units of the row's largest x and matches the float64 reference."""
    norm = normaliser("lssar", 64)
    q = torch.randn(1, 1, 1, 64, dtype=torch.float64)
    k = (-q).expand(1, 1, 600, 64).clone()
    k[0, 0, 123] = q[0, 0, 0]
    v = torch.randn(1, 1, 600, 64, dtype=torch.float64)
    results = []
    grad_out = None
    for exact in (True, False):
        args = [x.detach() if exact else x.detach().float() for x in (q, k, v)]
        for x in args:
            x.requires_grad_()
        qp, kp, scale = norm.prepare(args[0], args[1], None)
        if exact:
            out = attend_reference(qp, kp, args[2], normaliser=norm, causal=False, scale=scale).out
            grad_out = torch.randn_like(out)
        else:
            out = attend_triton(norm, qp, kp, args[2], causal=False, scale=scale).out
        results.append((out, *torch.autograd.grad(out, args, grad_out.to(out.dtype))))
    for label, want, got in zip(["out", "dq", "dk", "dv"], *results, strict=True):
        error = relative_error(got, want)
        assert error <= 8 * (64 + 600) * U32 * AMPLIFY["lssar"], f"{label}: {error:.2e}"
