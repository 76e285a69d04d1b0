"""Softmax-family variants through PyTorch's own fused SDPA kernel, by exact reformulation.

On CPU, torch's ``scaled_dot_product_attention`` has a fused flash kernel with its own backward; FlexAttention
has none there. Each variant below is rewritten as a plain SDPA call (or the flash op pair) on augmented
inputs, so that forward and backward run in the fused kernel and autograd routes every gradient (q, k, v,
sink logits / vectors, the T5 table) through it. With ŝ the scale, extra columns are written ``[a | b]``:

- **ALiBi** (``alibi_sdpa``): the bias m_h·(j − i) is rank two, m_h·j·1 + 1·(−m_h·i), so
  q'_i = [m_h, −m_h·i | ŝ·q_i], k'_j = [j, 1 | k_j] and SDPA with ``scale=1`` gives q'·k' = ŝ q·k + m_h (j − i).
  The bias columns come *first*: the kernel's matrix product accumulates the head dimension in order, so
  m_h·j − m_h·i is formed before q·k is added. With m_h·j and m_h·i exact in floating point the difference is
  exact, and the scores are as accurate as the dense reference's (the slope is split m = m_hi + m_lo with m_hi
  short enough that m_hi·j is exact; power-of-two slopes — H a power of two — have m_lo = 0 and need two
  columns). Any visibility (causal, window, KV cache, non-causal) is the usual SDPA mask. The symmetric
  non-causal bias −m_h·|i − j| is not low rank: it is passed as a float [H, Tq, Tk] ``attn_mask`` (no grad).
- **Sinks** (``sinks_sdpa``): n sink keys are prepended to the keys. gpt-oss logits ℓ_{h,s}: q'_i gets ℓ_h in n
  indicator columns, sink key s is the indicator e_s (zero elsewhere) and real keys are zero there, so the
  sink score is exactly ℓ_{h,s} and dℓ arrives through SDPA's dq; values of logit sinks are 0. kv sinks: the
  sink keys are σ_k and the values σ_v. One more value column (1 on sinks, 0 on real keys) returns the sink
  mass Σ_s w_is exactly. Causal with Tq = Tk uses SDPA's ``is_causal`` (top-left aligned) with n zero dummy
  queries prepended, so real query i (row n + i) sees every sink and keys ≤ i; the dummy rows are dropped.
  Windows and KV caches use a boolean mask with the sink columns visible. Sinks combine with ALiBi (the
  sinks carry no position: their bias columns are zero).
- **T5 / learned relative bias** (``relative_bias_sdpa``): the bias b_h(j − i) is a Toeplitz matrix built
  from a per-offset vector with ``unfold`` (−inf where a key is hidden, so it is also the mask) and passed to
  the flash op with ``is_causal`` (which skips hidden tiles). dq, dk, dv come from the flash backward op. The
  table gradient is Σ over each bucket's diagonals of dS = P ⊙ (dP − rowsum(dO ⊙ O)), computed in query
  blocks over a band only: every row of dS sums to zero, and all offsets beyond the band share one bucket
  (T5's last, r ≤ −max_distance), so that bucket's gradient is minus the band's sum. Non-causal attention
  has two far buckets; there the pass covers every offset above the lower far bucket (O(T²/2) extra work).
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
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from attnlab.attention.core import build_mask, repeat_kv
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
def _no_denormals() -> Iterator[None]:
    """Flush denormals to zero in the calling thread; the thread's previous setting is restored afterwards."""
    before = flushing_denormals()
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(before)


class _FlashNoDenormals(torch.autograd.Function):
    """The CPU flash op pair (scale 1) with denormals flushed to zero in forward and backward.

    ALiBi puts most scores far below their row's maximum (m_h·(i − j) up to m_h·T); their exponentials
    underflow into denormals, which make the kernel's exp and matrix products several times slower (measured
    2.9× SDPA at T = 2048 instead of ~1.2×). Flushed, those weights (< 1e-38 of the row maximum) are exactly 0.
    """

    @staticmethod
    def forward(ctx: Any, q: Tensor, k: Tensor, v: Tensor, is_causal: bool, mask: Tensor | None) -> Tensor:
        with _no_denormals():
            out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
                q, k, v, 0.0, is_causal, attn_mask=mask, scale=1.0
            )
        ctx.is_causal, ctx.mask = is_causal, mask
        ctx.save_for_backward(q, k, v, out, lse)
        return out

    @staticmethod
    def backward(ctx: Any, d_out: Tensor) -> tuple[Tensor | None, ...]:
        q, k, v, out, lse = ctx.saved_tensors
        with _no_denormals():
            dq, dk, dv = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
                d_out.contiguous(), q, k, v, out, lse, 0.0, ctx.is_causal, attn_mask=ctx.mask, scale=1.0
            )
        return dq, dk, dv, None, None


def _sdpa(qa: Tensor, ka: Tensor, va: Tensor, is_causal: bool, mask: Tensor | None, flush: bool) -> Tensor:
    """SDPA with scale 1 (GQA allowed); ``flush``: on CPU through ``_FlashNoDenormals``."""
    if not (flush and qa.device.type == "cpu"):
        gqa = qa.shape[1] != ka.shape[1]
        return F.scaled_dot_product_attention(
            qa, ka, va, attn_mask=mask, is_causal=is_causal, scale=1.0, enable_gqa=gqa
        )
    rep = qa.shape[1] // ka.shape[1]
    ka, va = repeat_kv(ka, rep), repeat_kv(va, rep)
    if mask is not None and mask.dtype == torch.bool:
        mask = torch.zeros(mask.shape, dtype=qa.dtype, device=qa.device).masked_fill_(~mask, NEG_INF)
    if mask is not None:
        mask = mask.to(qa.dtype).expand(1, qa.shape[1], *mask.shape[-2:]) if mask.dim() == 2 else mask.to(qa.dtype)
    return _FlashNoDenormals.apply(qa, ka, va, is_causal, mask)


def _fused(
    qa: Tensor,
    ka: Tensor,
    va: Tensor,
    *,
    n_sinks: int,
    causal: bool,
    window: int | None,
    attn_mask: Tensor | None,
    flush: bool = False,
) -> Tensor:
    """SDPA (scale 1) on augmented inputs, keys = [n sinks ⧺ Tk real]; pads to one head dim (the CPU flash
    kernel needs q, k and v of equal head dims: zero columns change no score) and returns [B, H, Tq, Dv']."""
    t_q, t_k, dv = qa.shape[2], ka.shape[2] - n_sinks, va.shape[-1]
    width = max(qa.shape[-1], dv)
    qa, ka = (F.pad(t, (0, width - t.shape[-1])) for t in (qa, ka))
    va = F.pad(va, (0, width - dv))
    if attn_mask is None and causal and window is None and t_q == t_k:
        if n_sinks:  # n dummy queries: SDPA's top-left causal mask then shows every sink to every real query
            qa = torch.cat([qa.new_zeros(*qa.shape[:2], n_sinks, width), qa], dim=2)
        return _sdpa(qa, ka, va, True, None, flush)[:, :, n_sinks:, :dv]
    if attn_mask is None:
        attn_mask = _visibility(t_q, t_k, n_sinks, causal, window, qa.device)
    return _sdpa(qa, ka, va, False, attn_mask, flush)[..., :dv]


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
    # the columns of q', of the real keys and of the sink keys, block by block in the same order
    q_cols: list[Tensor] = []
    k_cols: list[Tensor] = []
    s_cols: list[Tensor] = []
    mask: Tensor | None = None
    if alibi is not None and alibi.symmetric and not causal:  # −m·|i − j|: not low rank, a float mask
        mask = _symmetric_alibi_mask(alibi.slopes.to(q.device), t_q, t_k, causal, window, dtype)[None]
        if n_sinks:
            mask = torch.cat([mask.new_zeros(1, h, t_q, n_sinks), mask], dim=-1)
    elif alibi is not None:  # −m·|i − j| = m·(j − i) on every key a causal query sees: two (four) columns
        qc, kc = _alibi_columns(alibi.slopes.to(q.device), h, t_q, t_k, dtype)
        q_cols.append(qc[None].expand(b, h, t_q, -1))
        k_cols.append(kc[None, None].expand(b, h_kv, t_k, -1))
        s_cols.append(kc.new_zeros(b, h_kv, n_sinks, kc.shape[-1]))  # sinks carry no position
    v_sink: Tensor | None = None
    if sink_logits is not None:  # indicator columns: q carries ℓ_{h,s}, sink s is e_s, real keys are 0
        if sink_logits.shape != (h, n_sinks):
            raise ValueError(f"sink_logits must be [H, n] = [{h}, n]; got {tuple(sink_logits.shape)}")
        q_cols.append(sink_logits.to(dtype)[None, :, None, :].expand(b, h, t_q, n_sinks))
        k_cols.append(q.new_zeros(b, h_kv, t_k, n_sinks, dtype=dtype))
        s_cols.append(torch.eye(n_sinks, device=q.device, dtype=dtype).expand(b, h_kv, n_sinks, n_sinks))
        s_cols.append(q.new_zeros(b, h_kv, n_sinks, d, dtype=dtype))
        v_sink = q.new_zeros(b, h_kv, n_sinks, dv, dtype=dtype)
    elif sink_keys is not None and sink_values is not None:
        if sink_keys.shape != (h_kv, n_sinks, d) or sink_values.shape != (h_kv, n_sinks, dv):
            raise ValueError(
                f"sink_keys must be [Hkv, n, D] = [{h_kv}, n, {d}] and sink_values [Hkv, n, Dv]; got "
                f"{tuple(sink_keys.shape)}, {tuple(sink_values.shape)}"
            )
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
    flush = alibi is not None  # far-below-max scores: denormal weights (see _FlashNoDenormals)
    out = _fused(qa, ka, va, n_sinks=n_sinks, causal=causal, window=window, attn_mask=mask, flush=flush)
    mass = out[..., dv] if (v_sink is not None and want_mass) else None
    return out[..., :dv].to(v.dtype), mass


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
        s.add_(bias[:, a0:a1, j0:j1].to(dtype)).sub_(lse[:, :, a0:a1, None].to(dtype)).exp_()  # P
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
    plan = _BiasPlan(bucket, q.shape[2], k.shape[2], causal, window, scale).to(q.device)
    dv, width = v.shape[-1], max(q.shape[-1], v.shape[-1])  # the flash op needs one head dim: pad with zeros
    q, k, v = (F.pad(t, (0, width - t.shape[-1])) for t in (q, k, v))
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


def has_sdpa_form(score_mod: ScoreMod | None, like: Tensor, t_k: int | None = None) -> bool:
    """Whether ``softmax_sdpa`` runs this score_mod (None: plain SDPA) for queries like ``like`` and ``t_k`` keys
    (default: as many as queries). The T5 form materialises an [H, Tq, Tk] bias: only up to
    ``RELATIVE_BIAS_MAX_ELEMENTS`` (beyond, the chunked path's O(T) memory is the better choice)."""
    if score_mod is None:
        return True
    form = sdpa_form(score_mod)
    if isinstance(form, RelativeBiasForm):
        h, t_q = (like.shape[1], like.shape[2]) if like.dim() == 4 else (1, 1)
        small = h * t_q * (t_q if t_k is None else t_k) <= RELATIVE_BIAS_MAX_ELEMENTS
        return like.device.type == "cpu" and small
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
