"""A learned relative bias (T5: Raffel et al. 2020, arXiv:1910.10683) through PyTorch's CPU flash op pair, exactly.

s_ij = ŝ q_i·k_j + table[bucket(j − i), h]. With Tq = Tk and no window the banded form runs
(``attnlab.attention.fast.sdpa_band``, O(T·(c + W)) memory). Windows and KV caches use the bias as a Toeplitz
[H, Tq, Tk] float mask (``unfold`` of the per-offset vector, −inf where hidden) with ``is_causal`` when Tq = Tk; the
table gradient is Σ over each bucket's diagonals of dS over a band of offsets (rows of dS sum to zero, so the far
bucket holds minus the band's sum; non-causal attention has two far buckets and the pass covers every offset above
the lower one). The dispatch table sends a call here only up to ``RELATIVE_BIAS_MAX_ELEMENTS`` mask elements.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from attnlab.attention.core import repeat_kv
from attnlab.attention.fast import sdpa_band as band
from attnlab.attention.fast.sdpa_band import BandPlan, RelativeBiasBand, diagonal_sums
from attnlab.attention.fast.sdpa_flash import NEG_INF, check_inputs
from attnlab.attention.fast.tiling import exp_shifted_
from attnlab.types import compute_dtype

BAND_BLOCK = 256  # query rows per block of the T5 table-gradient pass
RELATIVE_BIAS_MAX_ELEMENTS = 2**26  # the T5 form's [H, Tq, Tk] bias up to 256 MiB (float32): H = 8 up to T ≈ 2900


def _toeplitz(u: Tensor, t_q: int, t_k: int) -> Tensor:
    """[H, Tq, Tk] with M[h, a, j] = u[h, j − (Tk − Tq + a) + Tk − 1] (u indexed by offset r = j − i, from 1 − Tk)."""
    windows = u.unfold(-1, t_k, 1)  # [H, Tk, Tk]: windows[h, s, j] = u[h, s + j]
    return windows[:, :t_q].flip(-2).contiguous()  # row a is window Tq − 1 − a


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
        sums = diagonal_sums(ds)  # column x ↔ offset r = x − (c − 1) + j0 − off − a0
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
    check_inputs(q, k, v, causal)
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
    if band.BANDED and q.shape[2] == k.shape[2] and window is None:
        band_plan = BandPlan(bucket, q.shape[2], causal, scale, q.device)
        return RelativeBiasBand.apply(q, k, v, table, band_plan)[..., :dv]
    plan = _BiasPlan(bucket, q.shape[2], k.shape[2], causal, window, scale).to(q.device)
    return _RelativeBiasSDPA.apply(q, k, v, table, plan)[..., :dv]
