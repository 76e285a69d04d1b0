"""The softmax family's tile algebra: softmax and Cog's signed softmax sign(s)·softmax(|s|) (Lv et al. 2024,
arXiv:2411.07176), online over key tiles as in FlashAttention (Dao et al. 2022, arXiv:2205.14135; online
normaliser: Milakov & Gimelshein 2018, arXiv:1805.02867).

With a = |s| (Cog) or s, masked to −inf: forward keeps a running max m and sum l per row, rescaling the
accumulator by e^(m_old − m_new) when the max grows; the row's logsumexp lse = m + log l is saved. Backward per
tile: p = e^(a − lse), w = sign(s)·p (Cog) or p, dv += wᵀ dO and, with D_i = dO_i · o_i = Σ_j w_ij dw_ij,
ds = w (sign(s)·dw − D) (Cog; softmax: p (dw − D)): |s| passes the gradient through sign(s)
(``attnlab.attention.fast.chunked``'s ``SoftmaxRule``).
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def logits(s, vis, SIGNED: tl.constexpr):
    """a = |s| (signed) or s on visible entries, −inf elsewhere."""
    if SIGNED:  # noqa: SIM108 (a constexpr branch, resolved when the kernel compiles)
        a = tl.abs(s)
    else:
        a = s
    return tl.where(vis, a, float("-inf"))


@triton.jit
def sign_of(s):
    """sign(s) as float32: −1, 0 or 1 (torch.sign)."""
    return tl.where(s > 0, 1.0, tl.where(s < 0, -1.0, 0.0))


@triton.jit
def online_update(a, m, l_sum):
    """One tile of the online softmax: (p = e^(a − m_new), α = e^(m − m_new), m_new, l_new = α·l + Σ_j p)."""
    m_new = tl.maximum(m, tl.max(a, 1))
    alpha = tl.exp(m - m_new)
    p = tl.exp(a - m_new[:, None])
    return p, alpha, m_new, l_sum * alpha + tl.sum(p, 1)


@triton.jit
def softmax_grads(s, vis, dw, lse, dd, SIGNED: tl.constexpr):
    """(w, ds) of a tile from the saved row logsumexp ``lse`` and D = ``dd`` (both [M])."""
    p = tl.exp(logits(s, vis, SIGNED) - lse[:, None])
    if SIGNED:
        sign = sign_of(s)
        w = p * sign
        ds = w * (sign * dw - dd[:, None])
    else:
        w = p
        ds = p * (dw - dd[:, None])
    return w, ds
