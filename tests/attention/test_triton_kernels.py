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

Bounds: ``attnlab.benchmarks.triton_check.compare`` (the comparison itself, which a GPU's check runs too)
derives them from the dtype, the reduction lengths and the rule.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
import torch

from attnlab.attention.fast.chunked import PointwiseRule, SoftmaxRule
from attnlab.attention.fast.triton import (
    attend_triton,
    available,
    default_block,
    kernel_spec,
    supports,
    triton_attention,
)
from attnlab.benchmarks import triton_check as check

# not imported here: triton must see TRITON_INTERPRET=1 when it is first imported (the ``kernels`` fixture)
pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("triton") is None, reason="triton is not installed (pip install 'attnlab[gpu]')"
)

FUNCTION = "attnlab.attention.fast.triton.function"
BLOCK = 16  # query rows and key columns per tile
RULES = list(check.RULES)
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


@pytest.fixture(scope="module")
def kernels() -> Iterator[ModuleType]:
    """The kernel module, defined under Triton's interpreter (tests/conftest.py switches it on for the whole process
    when there is no GPU, before anything imports triton; run alone, this fixture does it)."""
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


def compare(name: str, *shape: object, params: dict[str, object] | None = None, **options: object) -> None:
    """``check.compare`` under the interpreter, with tiles of ``BLOCK``: every error within its bound."""
    params = {**ARGS.get(name, {}), **(params or {})}
    for c in check.compare(name, *shape, block=BLOCK, params=params, **options):  # type: ignore[arg-type]
        assert c.ok, f"{c.label}: {c.error:.2e} > {c.bound:.2e}"


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
    """The GPU's default tile (64 × 64): one query block and one key tile per head."""
    for c in check.compare("sigmoid", 37, 37, True, None, 2):
        assert c.ok, f"{c.label}: {c.error:.2e} > {c.bound:.2e}"


def test_lssar_peaked_long_row_does_not_overflow(kernels: ModuleType) -> None:
    """One key aligned with the query, 599 opposite: A ≈ 1 on one key, x = N·A − 1 ≈ 599 and x¹⁵ ≈ 5e41, beyond
    float32 (the float32 reference gives NaN there); the kernel works in units of the row's largest x and matches
    the float64 reference."""
    q = torch.randn(1, 4, 1, 64, dtype=torch.float64)
    k = (-q[:, :1]).expand(1, 1, 600, 64).clone()
    k[0, 0, 123] = q[0, 0, 0]
    v = torch.randn(1, 1, 600, 64, dtype=torch.float64)
    for c in check.compare("lssar", 1, 600, False, None, 1, d_head=64, inputs=(q, k, v)):
        assert c.ok, f"{c.label}: {c.error:.2e} > {c.bound:.2e}"


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


def test_strided_inputs_equal_contiguous_ones(kernels: ModuleType) -> None:
    """A transposed view ([B, T, H, D] → [B, H, T, D]) runs on its strides, a broadcast (stride 0) key head is
    copied first; both give exactly the contiguous call's output and gradients."""
    rule = check.normaliser("cog", 16).chunked_rule()
    q_leaf = torch.randn(1, 9, 4, 16, requires_grad=True)
    k_leaf = torch.randn(1, 1, 9, 16, requires_grad=True)
    v = torch.randn(1, 2, 9, 16, requires_grad=True)
    runs = []
    for contiguous in (False, True):
        q, k = q_leaf.transpose(1, 2), k_leaf.expand(1, 2, 9, 16)
        if contiguous:
            q, k = q.contiguous(), k.contiguous()
        out = triton_attention(rule, q, k, v, block_m=BLOCK, block_n=BLOCK)
        runs.append((out, *torch.autograd.grad(out, (q_leaf, k_leaf, v), torch.ones_like(out))))
    for got, want in zip(*runs, strict=True):
        assert torch.equal(got, want)


def test_default_tiles_narrow_for_wide_rows() -> None:
    """Tiles of 64 up to 256-byte rows (bf16 at D = 128, float32 at D = 64), 32 beyond (shared memory)."""
    x16, x32 = torch.empty(1, 1, 1, 128, dtype=torch.bfloat16), torch.empty(1, 1, 1, 128)
    assert default_block(x16, x16, qk_norm=False) == 64
    assert default_block(x32, x32, qk_norm=False) == 32
    assert default_block(x16, x16, qk_norm=True) == 32  # LSSA normalises q, k to float32 in the kernel
    assert default_block(x32[..., :64], x32[..., :64], qk_norm=False) == 64


def test_available_says_why_not(kernels: ModuleType) -> None:
    assert available("cpu") is None  # the interpreter runs CPU tensors
    assert "meta" in (available("meta") or "")


def test_lssa_scores_are_cosines_whatever_the_norms(kernels: ModuleType) -> None:
    """LSSA normalises q, k in the kernel: scaling a query row or a key changes nothing (up to rounding)."""
    norm = check.normaliser("lssa", 16)
    q, k, v = (torch.randn(1, 4, 9, 16) for _ in range(3))
    scaled_q, scaled_k = q.clone(), k.clone()
    scaled_q[0, 1, 3] *= 1e3
    scaled_k[0, 2, 5] *= 1e-3
    pairs = ((q, k), (scaled_q, scaled_k))
    outs = [attend_triton(norm, *norm.prepare(a, b, None)[:2], v, scale=1.0, raw_qk=(a, b)).out for a, b in pairs]
    bound = 8 * (16 + 9 + 9) * check.UNIT[torch.float32] * check.amplification(norm, 9)
    assert check.relative_error(outs[1], outs[0]) <= bound


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: the compiled kernels are checked on a GPU")
def test_compiled_kernels_match_reference_on_cuda() -> None:
    """On a GPU: the compiled kernels (a process without TRITON_INTERPRET) through ``check``'s command."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    command = [sys.executable, "-m", "attnlab.benchmarks.triton_check", "--device", "cuda"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


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


@pytest.mark.parametrize("name", ["sigmoid", "lssa"])
def test_a_layer_on_the_triton_path_equals_its_reference(
    kernels: ModuleType, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``Attention.run_path("triton")`` (what the dispatch picks on CUDA) wires the layer to the kernel: LSSA's
    raw q, k reach it. Run here under the interpreter by making ``choose`` answer triton on the CPU."""
    from attnlab.attention import AttentionConfig, AttentionSite, build_attention, dispatch

    site = AttentionSite(d_model=32, n_heads=4, seq_len=40)
    torch.manual_seed(0)
    fast = build_attention(AttentionConfig(normaliser=name, window=9), site)
    slow = build_attention(AttentionConfig(normaliser=name, window=9, backend="reference"), site)
    slow.load_state_dict(fast.state_dict())
    x = torch.randn(2, 33, 32)
    want = slow(x)
    monkeypatch.setattr(dispatch, "choose", lambda call: dispatch.Choice("triton", "auto-on-triton", "test"))
    got = fast(x)
    bound = 8 * (8 + 33 + 33) * check.UNIT[torch.float32] * check.amplification(fast.normaliser, 33)
    assert check.relative_error(got, want) <= bound
