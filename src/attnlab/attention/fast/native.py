"""Compiled CPU kernels of the chunked backend: the same tiled, recomputing algorithms in one C++ loop nest.

The chunked backend's PyTorch form (``attnlab.attention.fast.chunked``) launches a dozen tensor operations per
tile, each a pass over memory; on CPU that costs more than the tile's matrix products. ``native.cpp`` runs each
query block as matrix products on tiles (BLAS ``?gemm_``, the library PyTorch links) with the pointwise work
fused in between, in vectorised loops: the structure of FlashAttention (Dao et al. 2022, arXiv:2205.14135).
It is built on first use with ``torch.utils.cpp_extension`` for the machine it runs on (it prints how long that
took; cached under ``~/.cache/torch_extensions``; needs a C++ compiler and ninja).

Two kernels, each the specification's formulas (the normaliser's reference implementation) on tiles:

- **softmax**, **signed softmax** (Cog: sign(s)·softmax(|s|)) and **sigmoid** (σ(s + b), no row normaliser),
  with optional soft-capping s ← c·tanh(s/c) (Gemma 2) and a relative-position bias given as one vector per head
  over the offsets r = j − i (ALiBi: −m_h·|r| or m_h·r; T5: table[bucket(r), h]). Forward: online max and sum
  over key tiles (sigmoid: none); backward per tile: P = exp(s − lse), dS = P ⊙ (dO·vᵀ − rowsum(dO ⊙ O))
  (Cog: w ⊙ (sign(s)·dO·vᵀ − rowsum(dO ⊙ O)); sigmoid: w(1 − w) ⊙ dO·vᵀ), times 1 − tanh² under a cap; the bias
  vector's gradient is dS summed along each diagonal, which autograd carries to the T5 table through the gather.
- **softplus** (LSSA, and LSSAR's re-weighting) with q, k l2-normalised inside the kernel: a query block holds
  its visible row of scores (O(block · T) memory per thread), so LSSAR's two row statistics (Σu, then Σr) and
  its backward's row sum need no recomputed products. Backward as in ``ReweightedSoftplusRule``.

Float32 runs in float32 (bf16 / fp16 inputs are computed in float32, as the PyTorch form does), float64 in
float64 (for gradcheck). Weights below e^−64 of a row's maximum are exactly 0 (as the PyTorch form's
``EXP_FLOOR``), so no denormal reaches a matrix product. A softmax row that sees no key at all (only possible
for non-causal windows with more queries than keys) gives 0, where the dense reference gives NaN.

``covers`` says which calls the kernels run: not document masks, a differentiable lse (sinks), score_mods without a
typed bias (``attnlab.types.AlibiBias`` / ``RelativeBias``, handed over by the position's ``score_bias()``), the other
normalisers (clipped softmax, ReLU), qk_norm for softmax-family rules, non-CPU tensors. The dispatch table
(``attnlab.attention.dispatch``) asks it and ``available()``, and chooses the ``native`` path only where both hold;
``attend`` raises for any other call rather than falling back. ``ATTNLAB_NATIVE=0`` (or ``ENABLED = False``) turns
the kernels off; when the build fails, ``unavailable_reason()`` says why (``build_error()`` has the compiler's output).
"""

from __future__ import annotations

import hashlib
import math
import os
import platform
import shutil
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from attnlab.attention.fast.rule_pointwise import PointwiseRule
from attnlab.attention.fast.rule_softmax import SoftmaxRule
from attnlab.attention.fast.rule_softplus import ReweightedSoftplusRule, SoftplusRule
from attnlab.attention.fast.tiling import Options, Rule
from attnlab.types import AlibiBias, PositionBias, compute_dtype

SOURCE = Path(__file__).with_name("native.cpp")
ENABLED = os.environ.get("ATTNLAB_NATIVE", "1") != "0"
# tiles: softmax forward / backward (query rows, key columns); softplus query rows (a whole visible row of keys)
SOFTMAX_BLOCKS = (64, 512)
SOFTPLUS_ROWS = 32

_lock = threading.Lock()
_module: Any = None
_error: str | None = None  # one line: why the kernels are not available
_error_detail: str | None = None  # the whole message (compiler output) of a failed build


def _cflags() -> list[str]:
    flags = ["-O3", "-fopenmp", "-std=c++17"]
    if platform.machine() in ("x86_64", "AMD64"):
        flags += ["-march=native", "-mprefer-vector-width=512"]  # 512-bit vectors where the CPU has them
    return flags


def _cpu_signature() -> str:
    """What -march=native compiles for: the CPU's model and flags (a cached build is never run on another CPU)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor()
    keep = [ln for ln in lines if ln.startswith(("model name", "flags", "Features", "CPU part"))]
    return "\n".join(sorted(set(keep)))


def _build_name() -> str:
    digest = hashlib.sha256()
    for part in (
        SOURCE.read_bytes(),
        " ".join(_cflags()).encode(),
        _cpu_signature().encode(),
        torch.__version__.encode(),
    ):
        digest.update(part)
    return f"attnlab_native_{digest.hexdigest()[:12]}"


def _ensure_ninja_on_path() -> None:
    """torch's extension builder runs ``ninja`` from PATH; the ninja wheel puts it in the venv's bin, which is
    not on PATH when the venv's python runs without being activated."""
    if shutil.which("ninja"):
        return
    try:
        import ninja  # the PyPI wheel: its BIN_DIR holds the executable
    except ImportError:
        return
    os.environ["PATH"] = str(ninja.BIN_DIR) + os.pathsep + os.environ.get("PATH", "")


def _built(name: str) -> bool:
    """Whether torch's extension cache already holds this build (then loading takes a moment, not a minute)."""
    try:
        from torch.utils.cpp_extension import _get_build_directory

        return (Path(_get_build_directory(name, verbose=False)) / f"{name}.so").is_file()
    except Exception:  # a private helper: if it changes, only the message is affected
        return False


def module() -> Any | None:
    """The compiled extension, built on the first call; None when disabled or when it cannot be built."""
    global _module, _error, _error_detail
    if not ENABLED:
        return None
    if _module is not None or _error is not None:
        return _module
    with _lock:
        if _module is None and _error is None:
            try:
                from torch.utils.cpp_extension import load

                _ensure_ninja_on_path()
                name = _build_name()
                fresh = not _built(name)
                if fresh:
                    print("attnlab: compiling the native CPU kernels (once per machine)", file=sys.stderr)
                start = time.perf_counter()
                ext = load(
                    name=name,
                    sources=[str(SOURCE)],
                    extra_cflags=_cflags(),
                    extra_ldflags=["-fopenmp"],
                    verbose=False,
                )
                if not ext.blas_available():
                    raise RuntimeError("this PyTorch build exports no sgemm_/dgemm_ (BLAS) symbols")
                if fresh:
                    print(f"attnlab: compiled in {time.perf_counter() - start:.1f} s", file=sys.stderr)
                _module = ext
            except Exception as e:  # any build failure means: use the PyTorch form
                text = str(e).strip()
                _error = f"{type(e).__name__}: {text.splitlines()[-1] if text else ''} (native.build_error())"
                _error_detail = f"{type(e).__name__}: {text}"
    return _module


def build_error() -> str | None:
    """The full message of a failed build (the compiler's output), or None."""
    return _error_detail


def unavailable_reason() -> str | None:
    """Why the kernels are not used (None: they are available)."""
    if not ENABLED:
        return "disabled (ATTNLAB_NATIVE=0)"
    module()
    return _error


def available() -> bool:
    return module() is not None


# --- the autograd Functions ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Call:
    scale: float
    causal: bool
    window: int  # 0: none
    dtype: torch.dtype  # compute dtype


@dataclass(frozen=True)
class _Kind:
    """Which score normaliser the softmax kernel runs, with its constants."""

    kind: int  # 0 softmax, 1 signed softmax (Cog), 2 sigmoid
    softcap: float = 0.0  # 0: none
    sigmoid_bias: float = 0.0


def _inputs(call: _Call, *xs: Tensor) -> list[Tensor]:
    return [x.detach().to(call.dtype).contiguous() for x in xs]


class _NativeSoftmax(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None, call: _Call, kind: _Kind) -> Tensor:
        qc, kc, vc = _inputs(call, q, k, v)
        bc = None if bias is None else _inputs(call, bias)[0]
        bq, bk = SOFTMAX_BLOCKS
        ctx.ext = module()  # the backward uses the same build even if ENABLED changes in between
        args = (call.scale, call.causal, call.window, kind.softcap, bc)
        out, lse = ctx.ext.softmax_forward(qc, kc, vc, *args, kind.kind, kind.sigmoid_bias, bq, bk)
        ctx.call, ctx.kind = call, kind
        ctx.dtypes = (q.dtype, k.dtype, v.dtype, None if bias is None else bias.dtype)
        ctx.save_for_backward(qc, kc, vc, out, lse, bc)
        return out.to(v.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, d_out: Tensor) -> tuple[Tensor | None, ...]:
        qc, kc, vc, out, lse, bc = ctx.saved_tensors
        call: _Call = ctx.call
        bq, bk = SOFTMAX_BLOCKS
        need_bias = bc is not None and ctx.needs_input_grad[3]
        kind: _Kind = ctx.kind
        dq, dk, dv, dbias = ctx.ext.softmax_backward(
            d_out.to(call.dtype).contiguous(), qc, kc, vc, out, lse, call.scale, call.causal, call.window,
            kind.softcap, bc, need_bias, kind.kind, kind.sigmoid_bias, bq, bk,
        )  # fmt: skip
        qt, kt, vt, bt = ctx.dtypes
        return dq.to(qt), dk.to(kt), dv.to(vt), (dbias.to(bt) if need_bias else None), None, None


@dataclass(frozen=True)
class _Softplus:
    length_scale: bool
    log_d: float
    eps: float
    reweight: bool
    power: float
    free_rows: int
    qk_norm: bool


class _NativeSoftplus(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, q: Tensor, k: Tensor, v: Tensor, call: _Call, sp: _Softplus) -> Tensor:
        qc, kc, vc = _inputs(call, q, k, v)
        args = (call.scale, call.causal, call.window, sp.length_scale, sp.log_d, sp.eps, sp.reweight, sp.power)
        ctx.ext = module()
        out, u_den, r_den = ctx.ext.softplus_forward(qc, kc, vc, *args, sp.free_rows, sp.qk_norm, SOFTPLUS_ROWS)
        ctx.call, ctx.sp, ctx.dtypes = call, sp, (q.dtype, k.dtype, v.dtype)
        ctx.save_for_backward(qc, kc, vc, out, u_den, r_den)
        return out.to(v.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, d_out: Tensor) -> tuple[Tensor | None, ...]:
        qc, kc, vc, out, u_den, r_den = ctx.saved_tensors
        call, sp = ctx.call, ctx.sp
        args = (call.scale, call.causal, call.window, sp.length_scale, sp.log_d, sp.eps, sp.reweight, sp.power)
        dq, dk, dv = ctx.ext.softplus_backward(
            d_out.to(call.dtype).contiguous(), qc, kc, vc, out, u_den, r_den, *args, sp.free_rows, sp.qk_norm,
            SOFTPLUS_ROWS,
        )  # fmt: skip
        qt, kt, vt = ctx.dtypes
        return dq.to(qt), dk.to(kt), dv.to(vt), None, None


# --- what the kernels run, and running them -------------------------------------------------------------------


def offset_bias(bias: PositionBias, h: int, t_q: int, t_k: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """A position's bias over the offsets r = j − p ∈ [1 − Tk, Tq − 1] (key j, query position p = i + Tk − Tq),
    [H, Tk + Tq − 1], computed as its score_mod computes it (ALiBi: −m_h·|r| or m_h·r; T5: table[bucket(r), h])."""
    r = torch.arange(1 - t_k, t_q, device=device)
    if isinstance(bias, AlibiBias):
        distance = r.abs() if bias.symmetric else -r  # the score_mod's q_idx − kv_idx (or its absolute value)
        return -(bias.slopes.to(device=device, dtype=dtype)[:, None] * distance.to(dtype))
    return bias.table[bias.bucket(r).long()].t().to(dtype)  # differentiable: the gather carries the grad


def _bias_heads(bias: PositionBias) -> int:
    return bias.slopes.shape[0] if isinstance(bias, AlibiBias) else bias.table.shape[1]


def _kind(rule: Rule, qk_norm: bool) -> _Kind | None:
    """The softmax kernel's normaliser for ``rule``, or None (softmax-family rules do not take qk_norm)."""
    if qk_norm:
        return None
    if type(rule) is SoftmaxRule:
        return _Kind(1 if rule.signed else 0, softcap=float(rule.softcap or 0.0))
    if type(rule) is PointwiseRule and rule.kind == "sigmoid" and rule.row_scale is None:
        return _Kind(2, sigmoid_bias=float(rule.bias))
    return None


def covers(
    rule: Rule,
    *,
    device: str,
    dtype: torch.dtype,
    n_heads: int,
    score_mod: bool,
    bias: PositionBias | None,
    qk_norm: bool = False,
    documents: bool = False,
    need_lse: bool = False,
) -> bool:
    """Whether the kernels compute this call of ``rule`` (built or not: ``available()`` says that).

    CPU, a floating dtype, no document or caller mask (``documents``: the C++ takes only causal / window) and no
    differentiable lse; softmax, Cog and sigmoid with a score_mod
    only when it comes with its typed bias (ALiBi, T5) for the same number of heads; LSSA / LSSAR without a
    score_mod. The dispatch table (``attnlab.attention.dispatch``) and ``chunked_attention`` both ask this.
    """
    if device != "cpu" or not dtype.is_floating_point or documents or need_lse:
        return False
    if _kind(rule, qk_norm) is not None:
        return not score_mod or (bias is not None and _bias_heads(bias) == n_heads)
    return type(rule) in (SoftplusRule, ReweightedSoftplusRule) and not score_mod


def same_layout(q: Tensor, k: Tensor, v: Tensor) -> bool:
    """q, k, v of one dtype, one batch, one q/k head dim and as many values as keys: what the kernels index
    (broadcast batches and mismatched shapes keep the PyTorch form's behaviour and errors)."""
    return (
        k.dtype == q.dtype
        and v.dtype == q.dtype
        and k.shape[0] == q.shape[0]
        and v.shape[0] == q.shape[0]
        and k.shape[3] == q.shape[3]
        and v.shape[2] == k.shape[2]
    )


def attend(rule: Rule, opts: Options, q: Tensor, k: Tensor, v: Tensor, bias: PositionBias | None = None) -> Tensor:
    """The output of ``rule`` through a native kernel; a call the kernels do not cover (``covers``) is an error."""
    has_mod = opts.score_mod is not None
    if not (
        covers(
            rule,
            device=q.device.type,
            dtype=q.dtype,
            n_heads=q.shape[1],
            score_mod=has_mod,
            bias=bias,
            qk_norm=opts.qk_norm,
            documents=opts.documents is not None or opts.mask is not None,
            need_lse=opts.need_lse,
        )
        and same_layout(q, k, v)
    ):
        raise ValueError(f"the native kernels do not run this call of {type(rule).__name__} (see native.covers)")
    if module() is None:
        raise RuntimeError(f"the native kernels are not available: {unavailable_reason()}")
    call = _Call(float(opts.scale), bool(opts.causal), int(opts.window or 0), compute_dtype(q))
    kind = _kind(rule, opts.qk_norm)
    if kind is not None:
        table = (
            None
            if not has_mod or bias is None
            else offset_bias(bias, q.shape[1], q.shape[2], k.shape[2], call.dtype, q.device)
        )
        return _NativeSoftmax.apply(q, k, v, table, call, kind)
    reweight = isinstance(rule, ReweightedSoftplusRule)
    sp = _Softplus(
        length_scale=bool(rule.length_scale),
        log_d=math.log(rule.d_head) if rule.length_scale else 0.0,
        eps=float(rule.eps),
        reweight=reweight,
        power=float(rule.power) if reweight else 1.0,
        free_rows=int(rule.free_rows) if reweight else 0,
        qk_norm=bool(opts.qk_norm),
    )
    return _NativeSoftplus.apply(q, k, v, call, sp)
