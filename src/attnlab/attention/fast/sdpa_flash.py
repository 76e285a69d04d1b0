"""PyTorch's CPU flash attention op pair on augmented inputs: the engine of the exact SDPA forms.

On CPU, torch's ``scaled_dot_product_attention`` has a fused flash kernel with its own backward; FlexAttention has
none there. The SDPA forms (``attnlab.attention.fast.sdpa_variants``) rewrite a variant as calls of the flash op pair
(``_scaled_dot_product_flash_attention_for_cpu`` and its backward, which also return and take the rows' log-sum-exp)
on augmented inputs, ``[a | b]`` being extra columns beside ŝq and k: ``Augment`` builds them in one allocation,
``FlashWithSinks`` runs the op pair over the real keys and merges n extra keys (sinks) through the log-sum-exp,
``flash_cpu`` puts the two together, ``fused_sdpa`` is the one-SDPA-call form of other devices.

Numerics: ALiBi puts most scores far below their row maximum, and their exponentials underflow into denormals,
which slow the kernel several times; ``no_denormals`` flushes them in the calling thread (``flushing_denormals``
reads the setting back). The CPU flash kernel needs q, k and v of one head dim: ``head_width`` pads with zeros.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from attnlab.attention.core import build_mask, check_qkv, repeat_kv
from attnlab.types import compute_dtype


def check_inputs(q: Tensor, k: Tensor, v: Tensor, causal: bool) -> None:
    """``attend_reference``'s shape contract, with as many value heads as key heads (the SDPA forms index both)."""
    check_qkv(q, k, v, causal, same_kv_heads=True)


def visibility(t_q: int, t_k: int, n_sinks: int, causal: bool, window: int | None, device: torch.device) -> Any:
    """SDPA's mask over [sinks ⧺ keys] (sinks always visible): None, or a boolean [Tq, n + Tk]."""
    mask = build_mask(t_q, t_k, device, causal, window)
    if mask is None or n_sinks == 0:
        return mask
    return torch.cat([mask.new_ones(t_q, n_sinks), mask], dim=-1)


_DENORMAL = 1e-40  # a float32 denormal: it survives a multiplication unless denormals are flushed


def flushing_denormals() -> bool:
    """Whether the calling thread flushes denormals to zero (PyTorch has a setter but no getter)."""
    return (torch.tensor(_DENORMAL, dtype=torch.float32) * 1.0).item() == 0.0


@contextlib.contextmanager
def no_denormals(flush: bool = True) -> Iterator[None]:
    """Flush denormals to zero in the calling thread (if ``flush``); the previous setting is restored after.

    ALiBi puts most scores far below their row's maximum (m_h·(i − j) up to m_h·T); their exponentials
    underflow into denormals, which make the kernel's exp and matrix products several times slower (measured
    2.9× SDPA at T = 2048 instead of ~1.2×). Flushed, those weights (< 1e-38 of the row maximum) are exactly 0.
    """
    if not flush:
        yield
        return
    before = flushing_denormals()
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(before)


HEAD_ALIGN = 8


def head_width(d_qk: int, d_v: int) -> int:
    """The one head dim the CPU flash kernel needs for q, k and v (it refuses unequal ones): the larger of the
    two, rounded up to a multiple of ``HEAD_ALIGN`` (zero columns change no score and no output)."""
    width = max(d_qk, d_v)
    return width if width % HEAD_ALIGN == 0 else width + HEAD_ALIGN - width % HEAD_ALIGN


class Augment(torch.autograd.Function):
    """[cols | scale·x | 0] in one allocation of ``width`` columns (``cols`` constant, broadcast to x's rows);
    the backward is one strided multiply: dx = scale·d[..., E : E + D]."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, cols: Tensor | None, scale: float, width: int, dtype: torch.dtype) -> Tensor:
        e = 0 if cols is None else cols.shape[-1]
        d = x.shape[-1]
        out = x.new_empty(*x.shape[:-1], width, dtype=dtype)
        if cols is not None:
            out[..., :e].copy_(cols)
        torch.mul(x, scale, out=out[..., e : e + d])
        out[..., e + d :].zero_()
        ctx.e, ctx.d, ctx.scale, ctx.dtype = e, d, scale, x.dtype
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        return (grad[..., ctx.e : ctx.e + ctx.d] * ctx.scale).to(ctx.dtype), None, None, None, None


class FlashWithSinks(torch.autograd.Function):
    """The CPU flash op pair over the real keys, with n extra keys (the sinks) merged through the log-sum-exp.

    Forward: (o, ℓ) = flash(q, k, v) and the sink scores z [B, H, Tq, n]; L = log(e^ℓ + Σ_s e^{z_s}),
    p_s = e^{z_s − L}, out = e^{ℓ − L}·o + Σ_s p_s σ_v,s and the sink mass Σ_s p_s (not differentiable).
    Backward: the flash backward op recomputes P = exp(s − lse) and dS = P ⊙ (dO·v − rowsum(dO ⊙ out)); given
    the total L and the merged out it yields the exact dq, dk, dv of the attention over [sinks ⧺ keys]. The
    sinks' own terms are n columns: dz_s = p_s (dO·σ_v,s − rowsum(dO ⊙ out)), dσ_v,s = Σ_i p_is dO_i.
    Without sinks (``z`` None) it is the plain op pair (out = o, mass None). ``flush``: denormals flushed.
    """

    @staticmethod
    def forward(
        ctx: Any,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        z: Tensor | None,
        sink_v: Tensor | None,
        is_causal: bool,
        mask: Tensor | None,
        flush: bool,
    ) -> tuple[Tensor, Tensor | None]:
        with no_denormals(flush):
            out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
                q, k, v, 0.0, is_causal, attn_mask=mask, scale=1.0
            )
        ctx.is_causal, ctx.mask, ctx.flush = is_causal, mask, flush
        ctx.sink_v_batch = None if sink_v is None else sink_v.shape[0]
        if z is None:
            ctx.save_for_backward(q, k, v, out, lse)
            return out, None
        wide = compute_dtype(z)
        zf = z.to(wide)
        total = torch.logaddexp(lse.to(wide), torch.logsumexp(zf, -1))  # [B, H, Tq]
        p_sink = torch.exp(zf - total[..., None])  # [B, H, Tq, n]
        merged = out.to(wide) * torch.exp(lse.to(wide) - total)[..., None]
        if sink_v is not None:
            merged = merged + p_sink @ sink_v.to(wide)
        out = merged.to(q.dtype)
        mass = p_sink.sum(-1)
        ctx.mark_non_differentiable(mass)
        ctx.save_for_backward(q, k, v, out, total.to(lse.dtype), p_sink, sink_v)
        return out, mass

    @staticmethod
    def backward(ctx: Any, d_out: Tensor, _d_mass: Tensor | None) -> tuple[Tensor | None, ...]:
        q, k, v, out, lse, *sinks = ctx.saved_tensors
        d_out = d_out.to(q.dtype).contiguous()
        with no_denormals(ctx.flush):
            dq, dk, dv = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
                d_out, q, k, v, out, lse, 0.0, ctx.is_causal, attn_mask=ctx.mask, scale=1.0
            )
        if not sinks:
            return dq, dk, dv, None, None, None, None, None
        p_sink, sink_v = sinks
        g = d_out.to(p_sink.dtype)
        row_dot = (g * out.to(p_sink.dtype)).sum(-1, keepdim=True)  # rowsum(dO ⊙ out)
        d_sink_v = None
        if sink_v is not None:
            d_z = p_sink * (g @ sink_v.to(p_sink.dtype).transpose(-1, -2) - row_dot)
            d_sink_v = p_sink.transpose(-1, -2) @ g  # [B, H, n, E]
            if ctx.sink_v_batch == 1:
                d_sink_v = d_sink_v.sum(0, keepdim=True)
            d_sink_v = d_sink_v.to(sink_v.dtype)
        else:
            d_z = -p_sink * row_dot
        return dq, dk, dv, d_z, d_sink_v, None, None, None


def float_mask(mask: Tensor, dtype: torch.dtype) -> Tensor:
    """A boolean visibility mask as the additive float mask the flash op takes (−inf where hidden)."""
    if mask.dtype != torch.bool:
        return mask.to(dtype)
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, NEG_INF)


CPU_FLASH = True  # on CPU, the flash op pair (sinks merged by log-sum-exp); False: the SDPA form of other devices


def flash_cpu(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    q_cols: Tensor | None,
    k_cols: Tensor | None,
    scale: float,
    dtype: torch.dtype,
    z: Tensor | None,
    sink_v: Tensor | None,
    causal: bool,
    window: int | None,
    attn_mask: Tensor | None,
    flush: bool,
) -> tuple[Tensor, Tensor | None]:
    """Attention with s = [q_cols | ŝq]·[k_cols | k] over [sinks ⧺ keys] on CPU, the sinks given by their
    scores z [B, H, Tq, n] and values ``sink_v`` [1, H, n, Dv] (None: zero; z None: no sinks), through
    ``FlashWithSinks``. Returns (out [B, H, Tq, Dv] in ``dtype``, sink mass [B, H, Tq] or None)."""
    t_q, t_k, dv = q.shape[2], k.shape[2], v.shape[-1]
    e = 0 if q_cols is None else q_cols.shape[-1]
    width = head_width(e + q.shape[-1], dv)
    qa = Augment.apply(q, q_cols, scale, width, dtype)
    ka = Augment.apply(k, k_cols, 1.0, width, dtype)
    va = v.to(dtype) if width == dv else Augment.apply(v, None, 1.0, width, dtype)
    rep = qa.shape[1] // ka.shape[1]
    ka, va = repeat_kv(ka, rep), repeat_kv(va, rep)
    if sink_v is not None and width != dv:
        sink_v = F.pad(sink_v, (0, width - dv))
    is_causal = attn_mask is None and causal and window is None and t_q == t_k
    mask = None
    if not is_causal:
        mask = attn_mask if attn_mask is not None else build_mask(t_q, t_k, qa.device, causal, window)
        mask = None if mask is None else float_mask(mask, dtype)
    out, mass = FlashWithSinks.apply(qa, ka, va, z, sink_v, is_causal, mask, flush)
    return (out if width == dv else out[..., :dv]), mass


def plain_sdpa(qa: Tensor, ka: Tensor, va: Tensor, is_causal: bool, mask: Tensor | None) -> Tensor:
    """SDPA with scale 1 (GQA allowed)."""
    gqa = qa.shape[1] != ka.shape[1]
    return F.scaled_dot_product_attention(qa, ka, va, attn_mask=mask, is_causal=is_causal, scale=1.0, enable_gqa=gqa)


def fused_sdpa(
    qa: Tensor,
    ka: Tensor,
    va: Tensor,
    *,
    n_sinks: int,
    causal: bool,
    window: int | None,
    attn_mask: Tensor | None,
) -> Tensor:
    """SDPA (scale 1) on augmented inputs, keys = [n sinks ⧺ Tk real]; pads to one head dim (the CPU flash
    kernel needs q, k and v of equal head dims: zero columns change no score) and returns [B, H, Tq, Dv']."""
    t_q, t_k, dv = qa.shape[2], ka.shape[2] - n_sinks, va.shape[-1]
    width = head_width(qa.shape[-1], dv)
    qa, ka = (F.pad(t, (0, width - t.shape[-1])) for t in (qa, ka))
    va = F.pad(va, (0, width - dv))
    if attn_mask is None and causal and window is None and t_q == t_k:
        if n_sinks:  # n dummy queries: SDPA's top-left causal mask then shows every sink to every real query
            qa = torch.cat([qa.new_zeros(*qa.shape[:2], n_sinks, width), qa], dim=2)
        return plain_sdpa(qa, ka, va, True, None)[:, :, n_sinks:, :dv]
    if attn_mask is None:
        attn_mask = visibility(t_q, t_k, n_sinks, causal, window, qa.device)
    return plain_sdpa(qa, ka, va, False, attn_mask)[..., :dv]


NEG_INF = float("-inf")
