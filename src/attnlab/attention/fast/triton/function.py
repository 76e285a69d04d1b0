"""Launches the kernels and wraps them in one ``torch.autograd.Function`` (forward, then a backward that
recomputes score tiles from q, k, v and the saved row statistics, as FlashAttention does: O(T) saved memory).

Importing this module imports triton and defines the kernels: under ``TRITON_INTERPRET=1`` (read by triton
when the kernels are defined, so it must be set before this import) they run on CPU tensors in Triton's
interpreter, otherwise they compile for the GPU of the tensors they get.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.autograd.function import once_differentiable
from triton.runtime.interpreter import InterpretedFunction

from attnlab.attention.fast.triton import kernels
from attnlab.attention.fast.triton.spec import KernelSpec

# How the kernels (and triton's own library, defined when triton was imported) were defined: fixed per process.
INTERPRETED = isinstance(kernels.attn_fwd, InterpretedFunction)
if isinstance(tl.standard.sigmoid, InterpretedFunction) != INTERPRETED:
    raise ImportError(
        "triton was imported with TRITON_INTERPRET set differently than when these kernels were defined; "
        "set it before triton's first import"
    )


@dataclass(frozen=True)
class Launch:
    """A call's static options: masking, scale, tile sizes (powers of two ≥ 16) and GPU launch settings."""

    causal: bool
    window: int | None
    scale: float
    qk_norm: bool = False  # l2-normalise q and k in the kernels (LSSA's cosine scores)
    block_m: int = 64  # ``default_block`` chooses these for a call
    block_n: int = 64
    num_warps: int = 4
    num_stages: int = 2


def _dense(x: Tensor) -> Tensor:
    """x itself when its elements tile one block of memory in some order of its dimensions (a transposed view, say),
    which ``empty_like`` reproduces, so that its gradient buffer has its strides; else a contiguous copy."""
    expected = 1
    for stride, size in sorted((s, n) for s, n in zip(x.stride(), x.shape, strict=True) if n != 1):
        if stride != expected:
            return x.contiguous()
        expected *= size
    return x


def _sizes(q: Tensor, k: Tensor, v: Tensor, spec: KernelSpec, launch: Launch) -> tuple[list[Any], dict[str, Any]]:
    """The kernels' shared trailing arguments (sizes, scale, window, parameters) and constexprs."""
    n_heads, t_q, d = q.shape[1:]
    n_kv, t_k, e = k.shape[1], k.shape[2], v.shape[-1]
    window = launch.window if launch.window is not None else 0
    sizes = [t_q, t_k, d, e, launch.scale, window, *spec.params]
    constexprs = {
        "RULE": spec.rule,
        "CAUSAL": launch.causal,
        "HAS_WINDOW": launch.window is not None,
        "LENGTH_SCALE": spec.length_scale,
        "QK_NORM": launch.qk_norm,
        "P_INT": spec.p_int,
        "BLOCK_M": launch.block_m,
        "BLOCK_N": launch.block_n,
        "BLOCK_D": max(16, triton.next_power_of_2(d)),
        "BLOCK_E": max(16, triton.next_power_of_2(e)),
        "PRECISION": "ieee" if q.dtype == torch.float32 else None,  # float32 stays float32 (no TF32)
        "UPCAST": INTERPRETED and q.dtype == torch.bfloat16,  # the interpreter's bf16 dot is wrong (``common.mm``)
        "num_warps": launch.num_warps,
        "num_stages": launch.num_stages,
    }
    return [n_heads // n_kv, *sizes], constexprs


def _strides(*xs: Tensor) -> list[int]:
    return [s for x in xs for s in x.stride()]


def attention_forward(spec: KernelSpec, launch: Launch, q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, ...]:
    """(out [B, Hq, Tq, Dv] in v's dtype, and the rule's row statistics A, B, C [B, Hq, Tq] in float32)."""
    b, n_heads, t_q, _ = q.shape
    out = q.new_empty(b, n_heads, t_q, v.shape[-1], dtype=v.dtype)
    stat_a = q.new_empty(b, n_heads, t_q, dtype=torch.float32)
    stat_b, stat_c = torch.empty_like(stat_a), torch.empty_like(stat_a)
    tail, constexprs = _sizes(q, k, v, spec, launch)
    grid = (triton.cdiv(t_q, launch.block_m), b * n_heads)
    stats = (stat_a, stat_b, stat_c)
    kernels.attn_fwd[grid](q, k, v, out, *stats, *_strides(q, k, v, out), n_heads, *tail, **constexprs)
    return out, *stats


def attention_backward(
    spec: KernelSpec, launch: Launch, saved: tuple[Tensor, ...], d_out: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """(dq, dk, dv) in q's, k's and v's dtypes: the dq kernel first (it saves D and the row pass), then dk, dv."""
    q, k, v, out, stat_a, stat_b, stat_c = saved
    d_out = d_out.to(out.dtype).contiguous()  # the kernels read dO with o's strides (o is contiguous)
    b, n_heads, t_q, _ = q.shape
    n_kv, t_k = k.shape[1], k.shape[2]
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    stat_d, stat_e = torch.empty_like(stat_a), torch.zeros_like(stat_a)
    tail, constexprs = _sizes(q, k, v, spec, launch)
    constexprs["P1_INT"] = spec.p1_int
    stats = (stat_a, stat_b, stat_c, stat_d, stat_e)
    grid_q = (triton.cdiv(t_q, launch.block_m), b * n_heads)
    kernels.attn_bwd_dq[grid_q](q, k, v, out, d_out, dq, *stats, *_strides(q, k, v, out), n_heads, *tail, **constexprs)
    grid_k = (triton.cdiv(t_k, launch.block_n), b * n_kv)
    kernels.attn_bwd_dkdv[grid_k](q, k, v, d_out, dk, dv, *stats, *_strides(q, k, v, out), n_kv, *tail, **constexprs)
    return dq, dk, dv


class TritonAttention(torch.autograd.Function):
    """out = attention of ``spec``'s rule; the backward recomputes tiles (nothing T×T is ever stored)."""

    @staticmethod
    def forward(ctx: Any, spec: KernelSpec, launch: Launch, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        q, k, v = _dense(q), _dense(k), _dense(v)
        out, *stats = attention_forward(spec, launch, q, k, v)
        ctx.spec, ctx.launch = spec, launch
        ctx.save_for_backward(q, k, v, out, *stats)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, d_out: Tensor) -> tuple[Tensor | None, ...]:
        dq, dk, dv = attention_backward(ctx.spec, ctx.launch, ctx.saved_tensors, d_out)
        return None, None, dq, dk, dv
