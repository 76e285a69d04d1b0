"""Clipped softmax's tile algebra (Bondarenko, Nagel & Blankevoort 2023, arXiv:2306.12929): w = clip((ζ − γ)·p
+ γ, 0, 1) with p the row's softmax (``attnlab.attention.normalisers.clipped_softmax``).

Forward: a first pass over key tiles for the row logsumexp (online max and sum), then w per tile; the lse is
saved. Backward: dp = (ζ − γ)·dw where the clip passes the gradient (0 ≤ y ≤ 1, inclusive, as ``clamp``'s
autograd), and the softmax backward ds = p (dp − E) needs E_i = Σ_j p_ij dp_ij first: one row pass in the dq
kernel, whose result the dk, dv kernel reads (``chunked.ClippedSoftmaxRule``).
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def clipped_weights(s, vis, lse, gamma, zeta):
    """(p, y, w) of a tile: softmax from the row lse, stretched y = (ζ − γ)p + γ, clipped w; w = 0 where hidden."""
    p = tl.exp(tl.where(vis, s - lse[:, None], float("-inf")))  # hidden: e^−∞ = 0, never an overflow
    y = (zeta - gamma) * p + gamma
    w = tl.where(vis, tl.minimum(tl.maximum(y, 0.0), 1.0), 0.0)
    return p, y, w


@triton.jit
def clipped_grads(s, vis, dw, lse, e_sum, gamma, zeta):
    """(w, ds, p·dp) of a tile; the row pass sums p·dp into E (and ignores ds)."""
    p, y, w = clipped_weights(s, vis, lse, gamma, zeta)
    dp = tl.where((y >= 0.0) & (y <= 1.0), (zeta - gamma) * dw, 0.0)
    return w, p * (dp - e_sum[:, None]), p * dp
