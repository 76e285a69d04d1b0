"""Softmax-family variants through PyTorch's own fused SDPA kernel, by exact reformulation.

On CPU, torch's ``scaled_dot_product_attention`` has a fused flash kernel with its own backward; FlexAttention
has none there. Each variant below is rewritten as SDPA calls (on CPU the flash op pair
``_scaled_dot_product_flash_attention_for_cpu`` and its backward, which also return and take the rows'
log-sum-exp) on augmented inputs, so that forward and backward run in the fused kernel, and every gradient
(q, k, v, sink logits / vectors, the T5 table) is exact. With ŝ the scale, extra columns are written ``[a | b]``:

- **ALiBi** (``alibi_sdpa``): the bias m_h·(j − i) is rank two, m_h·j·1 + 1·(−m_h·i), so
  q'_i = [m_h, −m_h·i | ŝ·q_i], k'_j = [j, 1 | k_j] and SDPA with ``scale=1`` gives q'·k' = ŝ q·k + m_h (j − i).
  The bias columns come *first*: the kernel's matrix product accumulates the head dimension in order, so
  m_h·j − m_h·i is formed before q·k is added. With m_h·j and m_h·i exact in floating point the difference is
  exact, and the scores are as accurate as the dense reference's (the slope is split m = m_hi + m_lo with m_hi
  short enough that m_hi·j is exact; power-of-two slopes — H a power of two — have m_lo = 0 and need two
  columns). Any visibility (causal, window, KV cache, non-causal) is the usual SDPA mask. The symmetric
  non-causal bias −m_h·|i − j| is not low rank: it is passed as a float [H, Tq, Tk] ``attn_mask`` (no grad).
- **Sinks** (``sinks_sdpa``). On CPU (``_FlashWithSinks``): the flash op runs over the real keys only and
  returns its log-sum-exp ℓ_i; the n sink scores z_is (gpt-oss logits ℓ_{h,s}, or ŝ q·σ_k) are merged in:
  L_i = log(e^ℓ_i + Σ_s e^z_is), out = e^{ℓ−L}·o + Σ_s e^{z−L} σ_v. The flash *backward* op recomputes
  P = exp(s − lse) and dS = P ⊙ (dO·v − rowsum(dO ⊙ out)): handed the total L and the merged out, it returns the
  exact dq, dk, dv of attention over [sinks ⧺ keys]; the sinks' own gradients are n columns. Cost: one SDPA
  call plus O(T·n). Other devices: the n sinks are prepended keys of one SDPA call. gpt-oss logits enter
  through indicator columns (q'_i gets ℓ_h in n columns, sink key s is e_s, real keys are zero there), so dℓ
  arrives through SDPA's dq; kv sinks are the keys σ_k with values σ_v; one more value column (1 on sinks)
  returns the sink mass. Causal with Tq = Tk uses ``is_causal`` (top-left aligned) with n zero dummy queries
  prepended, so real query i (row n + i) sees every sink and keys ≤ i. Windows and KV caches use a boolean
  mask with the sink columns visible. Sinks combine with ALiBi (the sinks carry no position). The sink mass
  is returned without a gradient.
- **T5 / learned relative bias** (``relative_bias_sdpa``), CPU. With Tq = Tk and no window it is *banded*
  (``_BandPlan``): T5 gives every offset r = j − i ≤ −W (W = 113 for 32 buckets, max_distance 128) one bucket,
  so those far keys carry one constant c_h per head and are a plain causal flash call on shifted sequences
  (queries W…T against keys 0…T − W; non-causal attention adds the mirror image on reversed sequences), its
  log-sum-exp raised by c_h. The band −W < r < W goes through the same op with the query blocks folded into its
  batch: each block of c queries against the c + W − 1 keys before it (overlapping strided views of the
  padded keys, no copies), the band's bias a shared [H, c, K] mask. Parts merge through their log-sum-exps and
  the flash backward op, given the merged out and the total log-sum-exp, gives each part's dq, dk, dv. The
  table gradient: the band's dS = P ⊙ (dP − rowsum(dO ⊙ O)) summed per offset in one pass over the band, and
  a far side's Σ dS = Σ_i w_i (dO_i·o_i − D_i) from its output and mass share w_i. Memory O(T·(c + W)).
  Windows and KV caches use the bias as a Toeplitz [H, Tq, Tk] float mask (``unfold`` of the per-offset
  vector, −inf where hidden) with ``is_causal`` when Tq = Tk; the table gradient is Σ over each bucket's
  diagonals of dS over a band of offsets (rows of dS sum to zero, so the far bucket holds minus the band's
  sum; non-causal attention has two far buckets and the pass covers every offset above the lower one).
- **Document masks** (``document_sdpa``): attention never crosses a document, so each contiguous run of one
  document id is its own SDPA call (runs of equal length, from every batch row, in one batched call): the
  total work is at most that of one causal SDPA call.
- Soft-capping c·tanh(s/c) is not expressible: SDPA applies no function to the scores.

Refused with ``ValueError``: inputs that are not [B, H, T, D], query heads not a multiple of key heads,
causal attention with Tq > Tk, document ids that are not contiguous runs.
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from attnlab.attention.core import build_mask, repeat_kv
from attnlab.attention.fast.chunked import exp_shifted_
from attnlab.common import ScoreMod, compute_dtype
from attnlab.position.alibi import AlibiForm
from attnlab.position.t5 import RelativeBiasForm

NEG_INF = float("-inf")
BAND_BLOCK = 256  # query rows per block of the T5 table-gradient pass
RELATIVE_BIAS_MAX_ELEMENTS = 2**26  # the T5 form's [H, Tq, Tk] bias up to 256 MiB (float32): H = 8 up to T ≈ 2900


def _check(q: Tensor, k: Tensor, v: Tensor, causal: bool) -> None:
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"q, k, v must be [B, H, T, D]; got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if q.shape[1] % k.shape[1] != 0 or k.shape[1] != v.shape[1]:
        raise ValueError(f"query heads ({q.shape[1]}) must be a multiple of key/value heads ({k.shape[1]})")
    if causal and q.shape[2] > k.shape[2]:
        raise ValueError(f"causal attention needs Tq <= Tk; got Tq={q.shape[2]}, Tk={k.shape[2]}")


def _split_slopes(slopes: Tensor, t_k: int) -> tuple[Tensor, Tensor]:
    """m = m_hi + m_lo (float64) with m_hi·j and m_hi·i exact in float32 for every position < t_k."""
    m = slopes.detach().double()
    bits = max(1, 23 - max(t_k, 1).bit_length())  # m_hi's significant bits: bits + log2(T) ≤ 23
    mantissa, exponent = torch.frexp(m)  # m = mantissa · 2^exponent, mantissa in [0.5, 1)
    hi = torch.ldexp(torch.round(torch.ldexp(mantissa, torch.full_like(exponent, bits))), exponent - bits)
    return hi, m - hi


def _alibi_columns(slopes: Tensor, h: int, t_q: int, t_k: int, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Bias columns ([H, Tq, E] for queries, [Tk, E] for keys) whose product is m_h·(j − i)."""
    if slopes.shape != (h,):
        raise ValueError(f"ALiBi slopes must be [H] = [{h}]; got {tuple(slopes.shape)}")
    device = slopes.device
    hi, lo = _split_slopes(slopes, t_k)
    parts = [hi] if bool((lo == 0).all()) else [hi, lo]
    i = torch.arange(t_k - t_q, t_k, device=device, dtype=torch.float64)  # queries are the last Tq positions
    j = torch.arange(t_k, device=device, dtype=torch.float64)
    q_cols, k_cols = [], []
    for m in parts:
        q_cols += [m[:, None].expand(h, t_q), -m[:, None] * i[None]]
        k_cols += [j, torch.ones_like(j)]
    return torch.stack(q_cols, -1).to(dtype), torch.stack(k_cols, -1).to(dtype)


def _visibility(t_q: int, t_k: int, n_sinks: int, causal: bool, window: int | None, device: torch.device) -> Any:
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
def _no_denormals(flush: bool = True) -> Iterator[None]:
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


def _head_width(d_qk: int, d_v: int) -> int:
    """The one head dim the CPU flash kernel needs for q, k and v (it refuses unequal ones): the larger of the
    two, rounded up to a multiple of ``HEAD_ALIGN`` (zero columns change no score and no output)."""
    width = max(d_qk, d_v)
    return width if width % HEAD_ALIGN == 0 else width + HEAD_ALIGN - width % HEAD_ALIGN


class _Augment(torch.autograd.Function):
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


class _FlashWithSinks(torch.autograd.Function):
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
        with _no_denormals(flush):
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
        with _no_denormals(ctx.flush):
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


def _float_mask(mask: Tensor, dtype: torch.dtype) -> Tensor:
    """A boolean visibility mask as the additive float mask the flash op takes (−inf where hidden)."""
    if mask.dtype != torch.bool:
        return mask.to(dtype)
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, NEG_INF)


CPU_FLASH = True  # on CPU, the flash op pair (sinks merged by log-sum-exp); False: the SDPA form of other devices


def _flash_cpu(
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
    ``_FlashWithSinks``. Returns (out [B, H, Tq, Dv] in ``dtype``, sink mass [B, H, Tq] or None)."""
    t_q, t_k, dv = q.shape[2], k.shape[2], v.shape[-1]
    e = 0 if q_cols is None else q_cols.shape[-1]
    width = _head_width(e + q.shape[-1], dv)
    qa = _Augment.apply(q, q_cols, scale, width, dtype)
    ka = _Augment.apply(k, k_cols, 1.0, width, dtype)
    va = v.to(dtype) if width == dv else _Augment.apply(v, None, 1.0, width, dtype)
    rep = qa.shape[1] // ka.shape[1]
    ka, va = repeat_kv(ka, rep), repeat_kv(va, rep)
    if sink_v is not None and width != dv:
        sink_v = F.pad(sink_v, (0, width - dv))
    is_causal = attn_mask is None and causal and window is None and t_q == t_k
    mask = None
    if not is_causal:
        mask = attn_mask if attn_mask is not None else build_mask(t_q, t_k, qa.device, causal, window)
        mask = None if mask is None else _float_mask(mask, dtype)
    out, mass = _FlashWithSinks.apply(qa, ka, va, z, sink_v, is_causal, mask, flush)
    return (out if width == dv else out[..., :dv]), mass


def _sdpa(qa: Tensor, ka: Tensor, va: Tensor, is_causal: bool, mask: Tensor | None) -> Tensor:
    """SDPA with scale 1 (GQA allowed)."""
    gqa = qa.shape[1] != ka.shape[1]
    return F.scaled_dot_product_attention(qa, ka, va, attn_mask=mask, is_causal=is_causal, scale=1.0, enable_gqa=gqa)


def _fused(
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
    width = _head_width(qa.shape[-1], dv)
    qa, ka = (F.pad(t, (0, width - t.shape[-1])) for t in (qa, ka))
    va = F.pad(va, (0, width - dv))
    if attn_mask is None and causal and window is None and t_q == t_k:
        if n_sinks:  # n dummy queries: SDPA's top-left causal mask then shows every sink to every real query
            qa = torch.cat([qa.new_zeros(*qa.shape[:2], n_sinks, width), qa], dim=2)
        return _sdpa(qa, ka, va, True, None)[:, :, n_sinks:, :dv]
    if attn_mask is None:
        attn_mask = _visibility(t_q, t_k, n_sinks, causal, window, qa.device)
    return _sdpa(qa, ka, va, False, attn_mask)[..., :dv]


def _symmetric_alibi_mask(
    slopes: Tensor, t_q: int, t_k: int, causal: bool, window: int | None, dtype: torch.dtype
) -> Tensor:
    """Float mask [H, Tq, Tk]: −m_h·|i − j| where visible, −inf where hidden."""
    i = torch.arange(t_k - t_q, t_k, device=slopes.device)[:, None]
    j = torch.arange(t_k, device=slopes.device)[None, :]
    bias = -slopes.detach().to(dtype)[:, None, None] * (i - j).abs().to(dtype)
    visible = build_mask(t_q, t_k, slopes.device, causal, window)
    return bias if visible is None else bias.masked_fill(~visible, NEG_INF)


def _softmax_sdpa(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    alibi: AlibiForm | None,
    sink_logits: Tensor | None,
    sink_keys: Tensor | None,
    sink_values: Tensor | None,
    causal: bool,
    scale: float | None,
    window: int | None,
    want_mass: bool,
) -> tuple[Tensor, Tensor | None]:
    """The shared construction of ``alibi_sdpa`` and ``sinks_sdpa``: (out, sink mass or None)."""
    _check(q, k, v, causal)
    b, h, t_q, d = q.shape
    h_kv, t_k, dv = k.shape[1], k.shape[2], v.shape[-1]
    scale = d**-0.5 if scale is None else scale
    # ALiBi's large bias columns need float32 (bf16 cannot hold m·j exactly); sinks alone keep q's dtype
    dtype = compute_dtype(q) if alibi is not None else q.dtype
    n_sinks = _count_sinks(sink_logits, sink_keys, sink_values)
    if sink_logits is not None and sink_logits.shape != (h, n_sinks):
        raise ValueError(f"sink_logits must be [H, n] = [{h}, n]; got {tuple(sink_logits.shape)}")
    if sink_keys is not None and sink_values is not None:
        _check_sink_vectors(sink_keys, sink_values, h_kv, n_sinks, d, dv)
    mask: Tensor | None = None
    qc: Tensor | None = None
    kc: Tensor | None = None
    if alibi is not None and alibi.symmetric and not causal:  # −m·|i − j|: not low rank, a float mask
        mask = _symmetric_alibi_mask(alibi.slopes.to(q.device), t_q, t_k, causal, window, dtype)[None]
    elif alibi is not None:  # −m·|i − j| = m·(j − i) on every key a causal query sees: two (four) columns
        qc, kc = _alibi_columns(alibi.slopes.to(q.device), h, t_q, t_k, dtype)
    if CPU_FLASH and q.device.type == "cpu":
        z: Tensor | None = None
        sink_v: Tensor | None = None
        if sink_logits is not None:
            z = sink_logits.to(dtype)[None, :, None, :].expand(b, h, t_q, n_sinks)
        elif sink_keys is not None and sink_values is not None:
            rep = h // h_kv
            z = (q.to(dtype) * scale) @ repeat_kv(sink_keys.to(dtype)[None], rep).transpose(-1, -2)
            sink_v = repeat_kv(sink_values.to(dtype)[None], rep)
        out, mass = _flash_cpu(
            q,
            k,
            v,
            q_cols=qc,
            k_cols=kc,
            scale=scale,
            dtype=dtype,
            z=z,
            sink_v=sink_v,
            causal=causal,
            window=window,
            attn_mask=mask,
            flush=alibi is not None,
        )
        return out.to(v.dtype), (mass if want_mass else None)
    # other devices: one SDPA call on augmented inputs, the sinks as prepended keys (see the module docstring)
    q_cols: list[Tensor] = []
    k_cols: list[Tensor] = []
    s_cols: list[Tensor] = []
    if qc is not None and kc is not None:
        q_cols.append(qc[None].expand(b, h, t_q, -1))
        k_cols.append(kc[None, None].expand(b, h_kv, t_k, -1))
        s_cols.append(kc.new_zeros(b, h_kv, n_sinks, kc.shape[-1]))  # sinks carry no position
    if mask is not None and n_sinks:  # the symmetric ALiBi mask, with the sinks visible
        mask = torch.cat([mask.new_zeros(1, h, t_q, n_sinks), mask], dim=-1)
    v_sink: Tensor | None = None
    if sink_logits is not None:  # indicator columns: q carries ℓ_{h,s}, sink s is e_s, real keys are 0
        q_cols.append(sink_logits.to(dtype)[None, :, None, :].expand(b, h, t_q, n_sinks))
        k_cols.append(q.new_zeros(b, h_kv, t_k, n_sinks, dtype=dtype))
        s_cols.append(torch.eye(n_sinks, device=q.device, dtype=dtype).expand(b, h_kv, n_sinks, n_sinks))
        s_cols.append(q.new_zeros(b, h_kv, n_sinks, d, dtype=dtype))
        v_sink = q.new_zeros(b, h_kv, n_sinks, dv, dtype=dtype)
    elif sink_keys is not None and sink_values is not None:
        s_cols.append(sink_keys.to(dtype)[None].expand(b, h_kv, n_sinks, d))
        v_sink = sink_values.to(dtype)[None].expand(b, h_kv, n_sinks, dv)
    qa = torch.cat([*q_cols, q.to(dtype) * scale], dim=-1)
    ka = torch.cat([*k_cols, k.to(dtype)], dim=-1)
    va = v.to(dtype)
    if v_sink is not None:
        ka = torch.cat([torch.cat(s_cols, dim=-1), ka], dim=2)
        va = torch.cat([v_sink, va], dim=2)
        if want_mass:  # one value column: 1 on the sinks, 0 on the real keys → Σ_s w_is
            flag = torch.cat([va.new_ones(b, h_kv, n_sinks, 1), va.new_zeros(b, h_kv, t_k, 1)], dim=2)
            va = torch.cat([va, flag], dim=-1)
    out = _fused(qa, ka, va, n_sinks=n_sinks, causal=causal, window=window, attn_mask=mask)
    mass = out[..., dv] if (v_sink is not None and want_mass) else None
    return out[..., :dv].to(v.dtype), mass


def _check_sink_vectors(sink_keys: Tensor, sink_values: Tensor, h_kv: int, n: int, d: int, dv: int) -> None:
    if sink_keys.shape != (h_kv, n, d) or sink_values.shape != (h_kv, n, dv):
        raise ValueError(
            f"sink_keys must be [Hkv, n, D] = [{h_kv}, n, {d}] and sink_values [Hkv, n, Dv]; got "
            f"{tuple(sink_keys.shape)}, {tuple(sink_values.shape)}"
        )


def _count_sinks(sink_logits: Tensor | None, sink_keys: Tensor | None, sink_values: Tensor | None) -> int:
    if sink_logits is None and sink_keys is None and sink_values is None:
        return 0
    if (sink_logits is None) == (sink_keys is None) or (sink_keys is None) != (sink_values is None):
        raise ValueError("give either sink_logits [H, n], or sink_keys [Hkv, n, D] and sink_values [Hkv, n, Dv]")
    if sink_logits is not None:
        if sink_logits.dim() != 2:
            raise ValueError(f"sink_logits must be [H, n]; got {tuple(sink_logits.shape)}")
        return sink_logits.shape[-1]
    assert sink_keys is not None
    if sink_keys.dim() != 3:
        raise ValueError(f"sink_keys must be [Hkv, n, D]; got {tuple(sink_keys.shape)}")
    return sink_keys.shape[1]


def alibi_sdpa(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    slopes: Tensor,
    *,
    symmetric: bool = False,
    causal: bool = True,
    scale: float | None = None,
    window: int | None = None,
) -> Tensor:
    """Softmax attention with ALiBi, s_ij = ŝ q_i·k_j − m_h·(i − j) (``symmetric``: −m_h·|i − j|), via SDPA.

    Exact: m_h·(j − i) = [m_h, −m_h·i]·[j, 1] is appended as leading columns of ŝq and k (SDPA then runs with
    scale 1; see the module docstring for why the bias columns lead and are split hi/lo). The symmetric bias
    of non-causal attention is not low rank and goes in as a float mask. q [B, H, Tq, D], k and v
    [B, Hkv, Tk, ·]; queries are the last Tq positions (KV cache). Computed in float32 for half inputs.
    """
    form = AlibiForm(slopes, symmetric)
    out, _ = _softmax_sdpa(
        q,
        k,
        v,
        alibi=form,
        sink_logits=None,
        sink_keys=None,
        sink_values=None,
        causal=causal,
        scale=scale,
        window=window,
        want_mass=False,
    )
    return out


def sinks_sdpa(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    sink_logits: Tensor | None = None,
    sink_keys: Tensor | None = None,
    sink_values: Tensor | None = None,
    alibi: AlibiForm | None = None,
    causal: bool = True,
    scale: float | None = None,
    window: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Softmax attention over [sinks ⧺ keys] via SDPA: (out [B, H, Tq, Dv], sink mass [B, H, Tq]).

    ``sink_logits`` [H, n] (gpt-oss: the sink score is ℓ_{h,s}, its value 0), or ``sink_keys`` [Hkv, n, D] and
    ``sink_values`` [Hkv, n, Dv] (scored ŝ q·σ_k, value σ_v). Sinks carry no position and are visible to every
    query, also under a window or a KV cache. Exact: logits enter through indicator columns (q' = [ℓ_h | ŝq],
    sink key [e_s | 0], real key [0 | k]), so SDPA's dq carries dℓ; the sink mass is an extra value column.
    ``alibi``: the ALiBi bias on the real keys (as ``alibi_sdpa``).
    """
    if sink_logits is None and sink_keys is None:
        raise ValueError("give either sink_logits [H, n], or sink_keys [Hkv, n, D] and sink_values [Hkv, n, Dv]")
    out, mass = _softmax_sdpa(
        q,
        k,
        v,
        alibi=alibi,
        sink_logits=sink_logits,
        sink_keys=sink_keys,
        sink_values=sink_values,
        causal=causal,
        scale=scale,
        window=window,
        want_mass=True,
    )
    assert mass is not None
    return out, mass


# --- learned relative bias (T5) ----------------------------------------------------------------------------


def _toeplitz(u: Tensor, t_q: int, t_k: int) -> Tensor:
    """[H, Tq, Tk] with M[h, a, j] = u[h, j − (Tk − Tq + a) + Tk − 1] (u indexed by offset r = j − i, from 1 − Tk)."""
    windows = u.unfold(-1, t_k, 1)  # [H, Tk, Tk]: windows[h, s, j] = u[h, s + j]
    return windows[:, :t_q].flip(-2).contiguous()  # row a is window Tq − 1 − a


def _diagonal_sums(a: Tensor) -> Tensor:
    """[H, c, W] → [H, c + W − 1]: column x sums a[:, r, x − (c − 1) + r] (the diagonals j − r = x − c + 1)."""
    h, c, w = a.shape
    width = w + c - 1
    skew = F.pad(a, (c - 1, 0)).reshape(h, c * width)
    skew = F.pad(skew, (0, c)).view(h, c, width + 1)  # row r shifted left by r
    return skew[..., :width].sum(1)


def _bias_gradient(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    out: Tensor,
    lse: Tensor,
    d_out: Tensor,
    bias: Tensor,
    scale: float,
    r_lo: int,
    r_hi: int,
) -> Tensor:
    """g[h, r − r_lo] = Σ_{b, i} dS[b, h, i, i + r] for offsets r in [r_lo, r_hi] (float32 / float64).

    dS = P ⊙ (dP − D), P = exp(ŝ q·k + bias − lse), dP = dO·v, D = rowsum(dO ⊙ O), in blocks of query rows over
    the keys the offsets reach.
    """
    _, h, t_q, _ = q.shape
    t_k = k.shape[2]
    off = t_k - t_q
    dtype = compute_dtype(q)
    g = torch.zeros(h, r_hi - r_lo + 1, dtype=dtype, device=q.device)
    row_dot = (d_out.to(dtype) * out.to(dtype)).sum(-1)  # [B, H, Tq]
    for a0 in range(0, t_q, BAND_BLOCK):
        a1 = min(a0 + BAND_BLOCK, t_q)
        j0, j1 = max(0, off + a0 + r_lo), min(t_k, off + a1 - 1 + r_hi + 1)
        if j0 >= j1:
            continue
        qb = q[:, :, a0:a1].to(dtype)
        s = torch.matmul(qb, k[:, :, j0:j1].to(dtype).transpose(-1, -2)).mul_(scale)
        exp_shifted_(s.add_(bias[:, a0:a1, j0:j1].to(dtype)).sub_(lse[:, :, a0:a1, None].to(dtype)))  # P
        dp = torch.matmul(d_out[:, :, a0:a1].to(dtype), v[:, :, j0:j1].to(dtype).transpose(-1, -2))
        ds = s.mul_(dp.sub_(row_dot[:, :, a0:a1, None])).sum(0)  # [H, c, W]
        sums = _diagonal_sums(ds)  # column x ↔ offset r = x − (c − 1) + j0 − off − a0
        c = a1 - a0
        first = j0 - off - a0 - (c - 1)  # offset of column 0
        lo, hi = max(r_lo, first), min(r_hi, first + sums.shape[-1] - 1)
        if lo <= hi:
            g[:, lo - r_lo : hi - r_lo + 1] += sums[:, lo - first : hi - first + 1]
    return g


class _RelativeBiasSDPA(torch.autograd.Function):
    """Flash forward / backward ops with a Toeplitz float mask, plus the bias table's gradient."""

    @staticmethod
    def forward(ctx: Any, q: Tensor, k: Tensor, v: Tensor, table: Tensor, plan: _BiasPlan) -> Tensor:
        u = table.detach().t()[:, plan.buckets].to(q.dtype).masked_fill(plan.hidden, NEG_INF)  # [H, 2Tk − 1]
        bias = _toeplitz(u, q.shape[2], k.shape[2])
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            q, k, v, 0.0, plan.is_causal, attn_mask=bias[None], scale=plan.scale
        )
        ctx.plan = plan
        ctx.save_for_backward(q, k, v, out, lse, bias, table)
        return out

    @staticmethod
    def backward(ctx: Any, d_out: Tensor) -> tuple[Tensor | None, ...]:
        q, k, v, out, lse, bias, table = ctx.saved_tensors
        plan: _BiasPlan = ctx.plan
        d_out = d_out.contiguous()
        dq, dk, dv = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
            d_out, q, k, v, out, lse, 0.0, plan.is_causal, attn_mask=bias[None], scale=plan.scale
        )
        d_table = None
        if ctx.needs_input_grad[3]:
            g = _bias_gradient(q, k, v, out, lse, d_out, bias, plan.scale, plan.r_lo, plan.r_hi)
            t_k = k.shape[2]
            buckets = plan.buckets[plan.r_lo + t_k - 1 : plan.r_hi + t_k]  # offsets r_lo … r_hi
            d_table = torch.zeros(table.shape[1], table.shape[0], dtype=g.dtype, device=g.device)
            d_table.index_add_(1, buckets, g)
            if plan.far_bucket is not None:  # rows of dS sum to 0: the far offsets hold minus the rest
                d_table[:, plan.far_bucket] -= g.sum(-1)
            d_table = d_table.t().to(table.dtype)
        return dq, dk, dv, d_table, None


class _BiasPlan:
    """The static part of one ``relative_bias_sdpa`` call (per-offset buckets and visibility, the band)."""

    def __init__(
        self, bucket: Callable[[Tensor], Tensor], t_q: int, t_k: int, causal: bool, window: int | None, scale: float
    ):
        device_r = torch.arange(1 - t_k, t_k)  # offsets r = j − i
        self.buckets = bucket(device_r).long()  # [2Tk − 1]
        hidden = device_r > 0 if causal else torch.zeros_like(device_r, dtype=torch.bool)
        if window is not None:
            hidden |= (device_r <= -window) if causal else (device_r.abs() >= window)
        self.hidden = hidden
        self.is_causal = causal and t_q == t_k  # the flash op's causal mask is top-left aligned
        self.scale = scale
        visible = (~hidden).nonzero().flatten() + (1 - t_k)
        vis_lo, vis_hi = int(visible.min()), int(visible.max())
        # the lowest visible offsets share one bucket up to r_far: their gradient is minus the rest's
        b = self.buckets[vis_lo + t_k - 1 : vis_hi + t_k]
        same = (b != b[0]).nonzero()
        r_far = vis_lo + (int(same[0]) - 1 if len(same) else len(b) - 1)
        if len(same) and r_far > vis_lo:
            self.r_lo, self.far_bucket = r_far + 1, int(b[0])
        else:
            self.r_lo, self.far_bucket = vis_lo, None
        self.r_hi = vis_hi

    def to(self, device: torch.device) -> _BiasPlan:
        self.buckets, self.hidden = self.buckets.to(device), self.hidden.to(device)
        return self


BANDED = True  # Tq = Tk without a window: far keys + dense band (False: the Toeplitz mask, as for KV caches)
BAND_QUERIES = 64  # query rows per block of the banded T5 path
BAND_CALL_BLOCKS = 32  # blocks per flash call of the band (its dk, dv come as [blocks, B·H, K, D])
BAND_GROUP_ELEMENTS = 2**18  # score elements (B·H·rows·keys) per group of blocks: stays in cache


class _BandPlan:
    """The banded decomposition of a learned relative bias over Tq = Tk = T (no window, no KV cache).

    Offsets r = j − i at or below −W_l all share one bucket (T5: r ≤ −113 for 32 buckets and max_distance 128),
    and so do offsets at or above W_r (non-causal only). Those *far* keys carry a constant bias c_h per head:
    their attention is a plain causal flash call on shifted sequences (left: queries W_l…T, keys 0…T − W_l;
    right: the same on reversed sequences) whose log-sum-exp is raised by c_h. The *band* −W_l < r < W_r runs
    through the same flash op with the blocks folded into its batch: block n holds c = ``BAND_QUERIES`` queries
    and the K = M·c keys from W_l − 1 before its first query (overlapping strided views of the zero-padded
    sequence, no copies), with the band's bias as a shared [H, c, K] mask. The parts are merged through their
    log-sum-exps, and the flash backward op, given the merged output and the total log-sum-exp, gives each
    part's exact share of dq, dk, dv.
    """

    def __init__(self, bucket: Callable[[Tensor], Tensor], t: int, causal: bool, scale: float, device: torch.device):
        r = torch.arange(1 - t, t)
        buckets = bucket(r).long()
        self.t, self.causal, self.scale = t, causal, scale
        self.w_left, self.bucket_left = self._far(buckets[: t - 1].flip(0), t)
        self.w_right, self.bucket_right = (1, None) if causal else self._far(buckets[t:], t)
        c = self.c = BAND_QUERIES
        self.pad_left = self.w_left - 1
        self.windows = -(-(c + self.pad_left + self.w_right - 1) // c)  # M
        self.keys = self.windows * c  # K
        self.blocks = -(-t // c)
        self.key_span = (self.blocks - 1) * c + self.keys  # padded key positions −(W_l − 1) …
        a = torch.arange(c)[:, None]
        x = torch.arange(self.keys)[None, :]
        offset = x - self.pad_left - a  # [c, K]: r of key x for query a of any block
        visible = (offset > -self.w_left) & (offset < (1 if causal else self.w_right))
        self.band_offsets = torch.arange(1 - self.w_left, 1 if causal else self.w_right)
        self.band_buckets = buckets[self.band_offsets + t - 1].to(device)
        self.offset_index = (offset.clamp(1 - self.w_left, int(self.band_offsets[-1])) + self.w_left - 1).to(device)
        self.visible = visible.to(device)
        n = torch.arange(self.blocks)[:, None, None]
        position = n * c - self.pad_left + x[None]  # [nb, 1, K] key positions
        query = n * c + a[None]  # [nb, c, 1]
        # keys outside the sequence are hidden, except a padded query's own (zero) key: its row stays finite
        in_range = (position >= 0) & ((position < t) | (position == query))  # [nb, c, K]
        # blocks where a real query could see a key outside the sequence through the band need their own mask
        # (a causal band never reaches past a real query: only the first blocks do)
        exposed = (~in_range & visible[None] & (query < t)).flatten(1).any(1)
        self.hidden = {int(n): (~in_range[n]).to(device) for n in exposed.nonzero().flatten()}

    @staticmethod
    def _far(buckets_outward: Tensor, t: int) -> tuple[int, int | None]:
        """(W, bucket) for offsets ordered outwards (|r| = 1, 2, …, T − 1): every |r| ≥ W has the outermost
        offset's bucket; (T, None) when no offset is that far."""
        if len(buckets_outward) == 0:
            return t, None
        outer = buckets_outward[-1]
        differ = (buckets_outward != outer).nonzero()
        w = int(differ[-1]) + 2 if len(differ) else 1
        return (w, int(outer)) if w < t else (t, None)

    def band_bias(self, table: Tensor, dtype: torch.dtype) -> Tensor:
        """[H, c, K]: the band's bias per (query, key) of a block, −inf off the band."""
        per_offset = table.detach().t()[:, self.band_buckets].to(dtype)  # [H, n_band]
        return per_offset[:, self.offset_index].masked_fill(~self.visible, NEG_INF)

    # --- block layouts: strided views, blocks first, B·H as the flash op's heads ---

    def pad_queries(self, x: Tensor) -> Tensor:
        """[B, H, T, ·] → [B, H, nb·c, ·] contiguous (zero rows past T)."""
        return F.pad(x, (0, 0, 0, self.blocks * self.c - self.t)).contiguous()

    def pad_keys(self, x: Tensor) -> Tensor:
        """[B, H, T, ·] → [B, H, key_span, ·] contiguous: W_l − 1 zero rows before, zeros after."""
        return F.pad(x, (0, 0, self.pad_left, self.key_span - self.pad_left - self.t)).contiguous()

    def blocks_of(self, padded: Tensor, rows: int, n0: int = 0, n1: int | None = None) -> Tensor:
        """[n1 − n0, B·H, rows, ·] view of a padded [B, H, L, ·] tensor: block n starts at row n·c (``rows``: c
        for queries, K for the overlapping key windows). Works for [B, H, L] (no last dim) too."""
        n1 = self.blocks if n1 is None else n1
        b, h, length = padded.shape[:3]
        tail = padded.shape[3:]
        inner = math.prod(tail)
        return padded.as_strided(
            (n1 - n0, b * h, rows, *tail),
            (self.c * inner, length * inner, inner, *([1] if tail else [])),
            padded.storage_offset() + n0 * self.c * inner,
        )

    def ranges(self, bias: Tensor, b: int) -> list[tuple[int, int, Tensor]]:
        """(n0, n1, mask) per flash call of the band: runs of blocks sharing the [1, B·H, c, K] mask, and each
        block with hidden keys alone with its own."""
        h = bias.shape[0]
        shared = bias[None].expand(b, h, *bias.shape[1:]).reshape(1, b * h, *bias.shape[1:])
        out: list[tuple[int, int, Tensor]] = []
        start = 0
        for n in [*sorted(self.hidden), self.blocks]:
            for n0 in range(start, n, BAND_CALL_BLOCKS):  # bounded: the backward's key-window grads are K/c × k
                out.append((n0, min(n, n0 + BAND_CALL_BLOCKS), shared))
            if n < self.blocks:
                own = bias.masked_fill(self.hidden[n], NEG_INF)
                out.append((n, n + 1, own[None].expand(b, h, *bias.shape[1:]).reshape(1, b * h, *bias.shape[1:])))
            start = n + 1
        return out

    def scores(self, qg: Tensor, kg: Tensor, bias: Tensor, n0: int, h: int) -> Tensor:
        """ŝ q·k + bias of blocks n0 … n0 + n, [n, B·H, c, K], −inf off the band and outside the sequence."""
        s = torch.matmul(qg, kg.transpose(-1, -2)).mul_(self.scale)
        n, bh = s.shape[:2]
        s.view(n, bh // h, h, self.c, self.keys).add_(bias)
        for block, hidden in self.hidden.items():
            if n0 <= block < n0 + n:
                s[block - n0].masked_fill_(hidden, NEG_INF)
        return s

    def groups(self, rows: int) -> Iterator[tuple[int, int]]:
        """Consecutive blocks whose scores hold at most ``BAND_GROUP_ELEMENTS`` elements."""
        size = max(1, BAND_GROUP_ELEMENTS // max(1, rows * self.c * self.keys))
        for n0 in range(0, self.blocks, size):
            yield n0, min(self.blocks, n0 + size)

    def far_slices(self, side: str) -> tuple[slice, slice, bool]:
        """(query rows, key rows, reversed) of the far keys on one side."""
        if side == "left":
            return slice(self.w_left, self.t), slice(0, self.t - self.w_left), False
        return slice(0, self.t - self.w_right), slice(self.w_right, self.t), True


def _lse_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of the flash op's log-sum-exp for inputs of ``dtype``."""
    return torch.float64 if dtype == torch.float64 else torch.float32


class _RelativeBiasBand(torch.autograd.Function):
    """Learned relative bias as far keys (flash op, constant bias) plus a band (flash op, the bias as a mask);
    see ``_BandPlan``. The table's gradient: per band offset Σ dS from one dense pass over the band; per far
    side Σ dS = Σ_i w_i (dO_i·o_i − Δ_i) from that side's output and weight."""

    @staticmethod
    def forward(ctx: Any, q: Tensor, k: Tensor, v: Tensor, table: Tensor, plan: _BandPlan) -> Tensor:
        b, h, t, _ = q.shape
        wide, c, nb = compute_dtype(q), plan.c, plan.blocks
        bias = plan.band_bias(table, q.dtype)  # [H, c, K]
        qp, kp, vp = plan.pad_queries(q), plan.pad_keys(k), plan.pad_keys(v)
        band_out = q.new_empty(b, h, nb * c, v.shape[-1])
        band_lse = q.new_empty(b, h, nb * c, dtype=_lse_dtype(q.dtype))
        for n0, n1, mask in plan.ranges(bias, b):
            o, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
                plan.blocks_of(qp, c, n0, n1),
                plan.blocks_of(kp, plan.keys, n0, n1),
                plan.blocks_of(vp, plan.keys, n0, n1),
                0.0,
                False,
                attn_mask=mask,
                scale=plan.scale,
            )
            plan.blocks_of(band_out, c, n0, n1).copy_(o)
            plan.blocks_of(band_lse, c, n0, n1).copy_(lse)
        parts = [(band_out[:, :, :t], band_lse[:, :, :t].to(wide), slice(0, t))]
        far: list[tuple[str, Tensor, Tensor]] = []
        for side, bucket in (("left", plan.bucket_left), ("right", plan.bucket_right)):
            if bucket is None:
                continue
            rows, keys, flip = plan.far_slices(side)
            qs, ks, vs = (x.flip(2) if flip else x for x in (q[:, :, rows], k[:, :, keys], v[:, :, keys]))
            o, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(qs, ks, vs, 0.0, True, scale=plan.scale)
            if flip:
                o, lse = o.flip(2), lse.flip(2)
            lse = lse.to(wide) + table.detach()[bucket].to(wide)[None, :, None]  # the far keys' constant bias
            parts.append((o, lse, rows))
            far.append((side, o, lse))
        total = parts[0][1].clone()
        for _, lse, rows in parts[1:]:
            total[:, :, rows] = torch.logaddexp(total[:, :, rows], lse)
        out = parts[0][0].to(wide) * torch.exp(parts[0][1] - total)[..., None]
        for o, lse, rows in parts[1:]:
            out[:, :, rows] += o.to(wide) * torch.exp(lse - total[:, :, rows])[..., None]
        out = out.to(q.dtype)
        ctx.plan, ctx.sides = plan, [side for side, _, _ in far]
        ctx.save_for_backward(qp, kp, vp, table, out, total, *[x for _, o, lse in far for x in (o, lse)])
        return out

    @staticmethod
    def backward(ctx: Any, d_out: Tensor) -> tuple[Tensor | None, ...]:
        plan: _BandPlan = ctx.plan
        qp, kp, vp, table, out, total, *far = ctx.saved_tensors
        t = plan.t
        q, k, v = qp[:, :, :t], kp[:, :, plan.pad_left : plan.pad_left + t], vp[:, :, plan.pad_left : plan.pad_left + t]
        b, h = q.shape[:2]
        wide, c, nb = total.dtype, plan.c, plan.blocks
        d_out = d_out.to(q.dtype)
        g = d_out.to(wide)
        row_dot = (g * out.to(wide)).sum(-1)  # Δ_i = rowsum(dO ⊙ O), [B, H, T]
        d_table = torch.zeros(table.shape[1], table.shape[0], dtype=wide, device=q.device)  # [H, buckets]
        # the band: the flash backward op per range of blocks; dk, dv overlap-added from the key windows
        bias = plan.band_bias(table, q.dtype)
        gp, op_ = plan.pad_queries(d_out), plan.pad_queries(out)
        lse_p = F.pad(total.to(_lse_dtype(q.dtype)), (0, nb * c - t)).contiguous()
        dq = torch.empty(b, h, nb * c, q.shape[-1], dtype=q.dtype, device=q.device)
        dk = torch.zeros(b, h, plan.key_span, k.shape[-1], dtype=wide, device=q.device)
        dv = torch.zeros(b, h, plan.key_span, v.shape[-1], dtype=wide, device=q.device)
        for n0, n1, mask in plan.ranges(bias, b):
            gq, gk, gv = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
                plan.blocks_of(gp, c, n0, n1),
                plan.blocks_of(qp, c, n0, n1),
                plan.blocks_of(kp, plan.keys, n0, n1),
                plan.blocks_of(vp, plan.keys, n0, n1),
                plan.blocks_of(op_, c, n0, n1),
                plan.blocks_of(lse_p, c, n0, n1),
                0.0,
                False,
                attn_mask=mask,
                scale=plan.scale,
            )
            plan.blocks_of(dq, c, n0, n1).copy_(gq)
            for m in range(plan.windows):  # key rows m·c … m·c + c of block n's window are key block n + m
                plan.blocks_of(dk, c, n0 + m, n1 + m).add_(gk[:, :, m * c : (m + 1) * c])
                plan.blocks_of(dv, c, n0 + m, n1 + m).add_(gv[:, :, m * c : (m + 1) * c])
        dq = dq[:, :, :t].to(wide)
        dk = dk[:, :, plan.pad_left : plan.pad_left + t]
        dv = dv[:, :, plan.pad_left : plan.pad_left + t]
        if ctx.needs_input_grad[3]:  # Σ dS per band offset, in one dense pass over the band
            bias_w = bias.to(wide)
            dot_p = F.pad(row_dot, (0, nb * c - t)).contiguous()
            ds_sum = torch.zeros(h, c, plan.keys, dtype=wide, device=q.device)
            for n0, n1 in plan.groups(b * h):
                qg, gg = plan.blocks_of(qp, c, n0, n1).to(wide), plan.blocks_of(gp, c, n0, n1).to(wide)
                kg, vg = plan.blocks_of(kp, plan.keys, n0, n1).to(wide), plan.blocks_of(vp, plan.keys, n0, n1).to(wide)
                s = plan.scores(qg, kg, bias_w, n0, h).sub_(plan.blocks_of(lse_p, c, n0, n1)[..., None])
                p = exp_shifted_(s)  # P
                ds = torch.matmul(gg, vg.transpose(-1, -2)).sub_(plan.blocks_of(dot_p, c, n0, n1)[..., None]).mul_(p)
                ds_sum += ds.view(n1 - n0, b, h, c, plan.keys).sum((0, 1))
            sums = _diagonal_sums(ds_sum)  # column x ↔ offset x − (c − 1) − (W_l − 1)
            first = int(plan.band_offsets[0]) + (c - 1) + plan.pad_left
            d_table.index_add_(1, plan.band_buckets, sums[:, first : first + len(plan.band_offsets)])
        # far keys: the flash backward op with the total log-sum-exp (less the constant bias) and the merged out
        for side, o, lse in zip(ctx.sides, far[0::2], far[1::2], strict=True):
            rows, keys, flip = plan.far_slices(side)
            bucket = plan.bucket_left if side == "left" else plan.bucket_right
            const = table.detach()[bucket].to(wide)[None, :, None]
            lse_rows = (total[:, :, rows] - const).to(_lse_dtype(q.dtype))
            pieces = (d_out[:, :, rows], q[:, :, rows], k[:, :, keys], v[:, :, keys], out[:, :, rows], lse_rows)
            gq, gk, gv = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
                *(x.flip(2) if flip else x for x in pieces), 0.0, True, scale=plan.scale
            )
            if flip:
                gq, gk, gv = gq.flip(2), gk.flip(2), gv.flip(2)
            dq[:, :, rows] += gq
            dk[:, :, keys] += gk
            dv[:, :, keys] += gv
            if ctx.needs_input_grad[3]:  # Σ dS over these keys = Σ_i w_i (dO_i·o_i − Δ_i), w_i their mass share
                w = torch.exp(lse - total[:, :, rows])
                share = w * ((g[:, :, rows] * o.to(wide)).sum(-1) - row_dot[:, :, rows])
                d_table[:, bucket] += share.sum((0, 2))
        d_grad = d_table.t().to(table.dtype) if ctx.needs_input_grad[3] else None
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), d_grad, None


def relative_bias_sdpa(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    table: Tensor,
    bucket: Callable[[Tensor], Tensor],
    *,
    causal: bool = True,
    scale: float | None = None,
    window: int | None = None,
) -> Tensor:
    """Softmax attention with a learned relative bias, s_ij = ŝ q_i·k_j + table[bucket(j − i), h] (T5), via
    PyTorch's CPU flash kernel; differentiable in q, k, v and ``table`` [num_buckets, H].

    The bias is materialised once as an [H, Tq, Tk] float mask (a Toeplitz matrix: ``unfold`` of the
    per-offset vector, −inf where hidden), the fused forward / backward ops give out, dq, dk, dv, and one
    pass over a band of offsets gives the table's gradient (see the module docstring). CPU only (the op is
    ``_scaled_dot_product_flash_attention_for_cpu``); GQA by repeating k and v.
    """
    _check(q, k, v, causal)
    if q.device.type != "cpu":
        raise ValueError(f"relative_bias_sdpa runs PyTorch's CPU flash kernel; got a {q.device.type} tensor")
    h = q.shape[1]
    if table.dim() != 2 or table.shape[1] != h:
        raise ValueError(f"table must be [num_buckets, H] with H = {h}; got {tuple(table.shape)}")
    if window is not None and window < 1:
        raise ValueError(f"window must be >= 1; got {window}")
    rep = h // k.shape[1]
    k, v = repeat_kv(k, rep), repeat_kv(v, rep)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    dv, width = v.shape[-1], max(q.shape[-1], v.shape[-1])  # the flash op needs one head dim: pad with zeros
    q, k, v = (F.pad(t, (0, width - t.shape[-1])) for t in (q, k, v))
    if BANDED and q.shape[2] == k.shape[2] and window is None:
        band_plan = _BandPlan(bucket, q.shape[2], causal, scale, q.device)
        return _RelativeBiasBand.apply(q, k, v, table, band_plan)[..., :dv]
    plan = _BiasPlan(bucket, q.shape[2], k.shape[2], causal, window, scale).to(q.device)
    return _RelativeBiasSDPA.apply(q, k, v, table, plan)[..., :dv]


# --- document masks ----------------------------------------------------------------------------------------


def document_runs(documents: Tensor) -> list[list[tuple[int, int]]]:
    """Per batch row, the (start, end) of each run of one document id; refuses an id that appears in two runs."""
    if documents.dim() != 2:
        raise ValueError(f"documents must be [B, T] integer ids; got {tuple(documents.shape)}")
    runs: list[list[tuple[int, int]]] = []
    for row in documents.cpu():
        change = (row[1:] != row[:-1]).nonzero().flatten() + 1
        bounds = [0, *change.tolist(), row.shape[0]]
        ids = [int(row[s]) for s in bounds[:-1]]
        if len(set(ids)) != len(ids):
            raise ValueError("document ids must form contiguous runs (an id appears in two separate runs)")
        runs.append(list(itertools.pairwise(bounds)))
    return runs


def document_sdpa(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    documents: Tensor,
    *,
    causal: bool = True,
    scale: float | None = None,
    window: int | None = None,
) -> Tensor:
    """Softmax attention where a query sees only keys of its own document, via SDPA per document run.

    ``documents`` [B, T]: integer ids in contiguous runs (packed sequences). Exact: the mask is block diagonal,
    so each run is an independent attention of its own (causal / windowed within the run, positions relative
    to the run's start — the same mask); runs of equal length, from all batch rows, go in one batched call.
    Needs Tq = Tk (no KV cache).
    """
    _check(q, k, v, causal)
    b, _, t, _ = q.shape
    if k.shape[2] != t or documents.shape != (b, t):
        raise ValueError(f"documents need Tq = Tk and ids [B, T] = {(b, t)}; got {tuple(documents.shape)}")
    runs = document_runs(documents)
    by_length: dict[int, list[tuple[int, int]]] = {}
    for row, row_runs in enumerate(runs):
        for start, end in row_runs:
            by_length.setdefault(end - start, []).append((row, start))
    gqa = q.shape[1] != k.shape[1]
    pieces: dict[tuple[int, int], Tensor] = {}
    for length, members in by_length.items():
        qs, ks, vs = (torch.cat([x[r : r + 1, :, s : s + length] for r, s in members]) for x in (q, k, v))
        if window is None:
            out = F.scaled_dot_product_attention(qs, ks, vs, is_causal=causal, scale=scale, enable_gqa=gqa)
        else:
            mask = build_mask(length, length, q.device, causal, window)
            out = F.scaled_dot_product_attention(qs, ks, vs, attn_mask=mask, scale=scale, enable_gqa=gqa)
        for n, key in enumerate(members):
            pieces[key] = out[n : n + 1]
    rows = [torch.cat([pieces[(r, s)] for s, _ in row_runs], dim=2) for r, row_runs in enumerate(runs)]
    return torch.cat(rows, dim=0)


# --- dispatch from a position's score_mod -------------------------------------------------------------------


def sdpa_form(score_mod: ScoreMod | None) -> AlibiForm | RelativeBiasForm | None:
    """The exact SDPA description a score_mod carries (``sdpa_form``: ALiBi, T5), or None."""
    form = getattr(score_mod, "sdpa_form", None)
    return form if isinstance(form, AlibiForm | RelativeBiasForm) else None


def has_sdpa_form(score_mod: ScoreMod | None, like: Tensor, t_k: int | None = None, window: int | None = None) -> bool:
    """Whether ``softmax_sdpa`` runs this score_mod (None: plain SDPA) for queries like ``like``, ``t_k`` keys
    (default: as many as queries) and ``window``. A T5 bias runs on CPU: banded (O(T) memory) when Tq = Tk without
    a window, else as an [H, Tq, Tk] mask, only up to ``RELATIVE_BIAS_MAX_ELEMENTS`` (beyond, the chunked path's
    O(T) memory is the better choice)."""
    if score_mod is None:
        return True
    form = sdpa_form(score_mod)
    if isinstance(form, RelativeBiasForm):
        h, t_q = (like.shape[1], like.shape[2]) if like.dim() == 4 else (1, 1)
        t_k = t_q if t_k is None else t_k
        banded = BANDED and t_q == t_k and window is None
        return like.device.type == "cpu" and (banded or h * t_q * t_k <= RELATIVE_BIAS_MAX_ELEMENTS)
    return form is not None


def softmax_sdpa(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    score_mod: ScoreMod | None = None,
    causal: bool = True,
    scale: float | None = None,
    window: int | None = None,
) -> Tensor:
    """Softmax attention with a position score_mod that has an exact SDPA form (ALiBi, T5), through SDPA.

    Raises ``ValueError`` for a score_mod without one (check ``has_sdpa_form`` first to fall back instead).
    """
    if score_mod is None:
        _check(q, k, v, causal)
        return _fused(
            q * (q.shape[-1] ** -0.5 if scale is None else scale),
            k,
            v,
            n_sinks=0,
            causal=causal,
            window=window,
            attn_mask=None,
        )
    form = sdpa_form(score_mod)
    if isinstance(form, AlibiForm):
        return alibi_sdpa(q, k, v, form.slopes, symmetric=form.symmetric, causal=causal, scale=scale, window=window)
    if isinstance(form, RelativeBiasForm) and q.device.type == "cpu":
        return relative_bias_sdpa(q, k, v, form.table, form.bucket, causal=causal, scale=scale, window=window)
    raise ValueError("this score_mod has no exact SDPA form (only ALiBi and learned relative biases such as T5)")
