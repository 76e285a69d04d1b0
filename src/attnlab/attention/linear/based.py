"""Based: Taylor linear attention plus exact sliding-window softmax (Arora, Eyuboglu, Zhang et al., "Simple
linear attention language models balance the recall-throughput tradeoff", ICML 2024, arXiv:2402.18668).

    q', k' = q P_h, k' P_h'                per-head learned projections d_head → d_f (d_f = 16 in the paper)
    s_ij = c · q'_i·k'_j                   c = 1/√d_f (``scale`` replaces c when given)
    Taylor linear attention:  t_ij = (1 + s_ij + s_ij²/2)·M_ij / Σ_j' (…)   ≥ 0.5 before normalising
                              = φ(q')·φ(k') with φ(x) = [1, x·√c, vec(xxᵀ)·c/√2]  (1 + d_f + d_f² features)
    sliding window:           w_ij = softmax_j(s_ij) over the keys with |i − j| < window (and j ≤ i if causal)
    a_ij = (t_ij + w_ij) / 2              (window = 0: a = t, Taylor linear attention alone)

How this differs from the paper, on purpose. In Based the two are *separate layers* of a hybrid stack (Taylor
linear attention at some layers, causal sliding-window softmax with window 64–128 at others, gated short
convolutions elsewhere), and q, k are projected straight to d_f by the model's own projections. attnlab's
heads module hands every normaliser q, k at d_head, so: (1) d_f comes from a learned per-head projection
inside this normaliser (``feature_dim=None`` skips it and uses d_head; the Taylor state is then
(1 + d + d²) × d_v per head); (2) one attnlab layer holds both mixers, sharing q', k', v, averaged so rows
stay row-stochastic (Wo absorbs the ½; a plain sum would only rescale the output). The gated convolutions
are not part of this entry. With grouped keys (GQA) each key/value head takes the key projection of the first
query head of its group.

Backends: the reference above (weights a, returned to the hooks); ``recurrent`` (Taylor state token by token
plus a softmax over the last ``window`` keys) and ``chunked`` (chunked Taylor scan, banded window softmax
per chunk). The window is relative, so there is no cross-attention.

Source: the authors' code, HazyResearch/based ``based/models/mixers/linear_attention.py``: ``TaylorExp``
returns [1, x/d_f^¼, vec(xxᵀ)/(√2·√d_f)] (the map above), ``LinearAttention`` defaults to ``feature_dim=16``
and ``eps=1e-12`` (the denominator's ε here); and ``train/configs/experiment/reference/based-360m.yaml`` for
the layer layout (Taylor linear attention at layers 1, 6, 11, 16, 21, ``SlidingAttention`` with
``window_size: 256`` at 2, 7, 12, 17, 22, ``BaseConv`` elsewhere), both read in the repository.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor, nn

from attnlab.attention.core import compute_dtype
from attnlab.attention.linear.base import SCAN_BACKENDS, ScanKernelAttention, ScanParams
from attnlab.attention.linear.feature_maps import taylor
from attnlab.attention.normalisers.base import NORMALISERS, masked_fill_zero


class BasedParams(ScanParams):
    feature_dim: int | None = Field(16, gt=0)  # d_f of the Taylor map; None: no projection, d_f = d_head
    window: int = Field(64, ge=0)  # sliding-window softmax over |i − j| < window; 0: Taylor linear attention only


def band(t_q: int, t_k: int, window: int, device: torch.device) -> Tensor:
    """Boolean [Tq, Tk]: |i − j| < window, queries at the last Tq positions (the mask adds causality)."""
    i = torch.arange(t_k - t_q, t_k, device=device)[:, None]
    j = torch.arange(t_k, device=device)[None, :]
    return (i - j).abs() < window


def window_softmax_recurrent(q: Tensor, k: Tensor, v: Tensor, scale: float, window: int, causal: bool) -> Tensor:
    """Token by token: each query reads only the keys within ``window`` of it (a ring buffer when causal)."""
    t_q, t_k = q.shape[2], k.shape[2]
    outs = []
    for t in range(t_q):
        p = t_k - t_q + t
        lo, hi = max(0, p - window + 1), (p + 1 if causal else min(t_k, p + window))
        s = (q[:, :, t, None] * scale) @ k[:, :, lo:hi].transpose(-1, -2)  # [B, H, 1, hi − lo]
        outs.append(s.softmax(-1) @ v[:, :, lo:hi])
    return torch.cat(outs, dim=2)


def window_softmax_chunked(
    q: Tensor, k: Tensor, v: Tensor, scale: float, window: int, causal: bool, chunk: int
) -> Tensor:
    """Per chunk of queries, a banded softmax over the keys it can reach: O(C·(C + window)) memory."""
    t_q, t_k = q.shape[2], k.shape[2]
    prefix = t_k - t_q
    outs = []
    for a in range(0, t_q, chunk):
        c = min(chunk, t_q - a)
        lo = max(0, prefix + a - window + 1)
        hi = prefix + a + c if causal else min(t_k, prefix + a + c - 1 + window)
        i = torch.arange(prefix + a, prefix + a + c, device=q.device)[:, None]
        j = torch.arange(lo, hi, device=q.device)[None, :]
        visible = (i - j).abs() < window
        if causal:
            visible &= j <= i
        s = (q[:, :, a : a + c] * scale) @ k[:, :, lo:hi].transpose(-1, -2)  # [B, H, c, hi − lo]
        outs.append(s.masked_fill(~visible, float("-inf")).softmax(-1) @ v[:, :, lo:hi])
    return torch.cat(outs, dim=2)


@NORMALISERS.register(
    "based",
    summary="Taylor linear attention (1 + s + s²/2) averaged with sliding-window softmax",
    paper="Arora et al. 2024, arXiv:2402.18668",
    params=BasedParams,
    example={"feature_dim": 8, "window": 8, "chunk_size": 8},
    row_stochastic=True,
    cross=False,
    backends=SCAN_BACKENDS,
    score_mod=False,
    kernel=True,
)
class Based(ScanKernelAttention):
    name = "based"
    params: BasedParams

    def __init__(self, params: BasedParams | None = None, site: object | None = None):
        super().__init__(params or BasedParams(), site)
        d_f = self.params.feature_dim
        if d_f is not None:
            if self.d_head < 1:
                raise ValueError("based with feature_dim needs a site with n_heads and d_head (per-head projections)")
            bound = self.d_head**-0.5  # nn.Linear's default init
            self.proj_q = nn.Parameter(torch.empty(self.n_heads, self.d_head, d_f).uniform_(-bound, bound))
            self.proj_k = nn.Parameter(torch.empty(self.n_heads, self.d_head, d_f).uniform_(-bound, bound))

    def features(self, q: Tensor, k: Tensor, scale: float | None) -> tuple[Tensor, Tensor, float | None]:
        if self.params.feature_dim is not None:
            step = self.n_heads // k.shape[1]  # GQA: a key/value head takes its group's first projection
            q = torch.einsum("bhtd,hdf->bhtf", q, self.proj_q.to(q.dtype))  # [B, H, Tq, d_f]
            k = torch.einsum("bhtd,hdf->bhtf", k, self.proj_k[::step].to(k.dtype))  # [B, Hkv, Tk, d_f]
        return q, k, (q.shape[-1] ** -0.5 if scale is None else scale)

    def forward(self, scores: Tensor, mask: Tensor | None) -> Tensor:
        s = scores.to(compute_dtype(scores))
        t = masked_fill_zero(1.0 + s + 0.5 * s * s, mask)
        linear = t / (t.sum(-1, keepdim=True) + self.params.eps)
        if self.params.window == 0:
            return linear
        visible = band(*s.shape[-2:], self.params.window, s.device)
        if mask is not None:
            visible = visible & mask
        return 0.5 * (linear + s.masked_fill(~visible, float("-inf")).softmax(-1))

    def kernel(self, q: Tensor, k: Tensor, scale: float) -> tuple[Tensor, Tensor]:
        return taylor(q * scale, 1.0), taylor(k, 1.0)  # φ(cq')·φ(k') = 1 + s + s²/2

    def extra(self, out: Tensor, q: Tensor, k: Tensor, v: Tensor, causal: bool, scale: float, recurrent: bool):
        w = self.params.window
        if w == 0:
            return out
        if recurrent:
            return 0.5 * (out + window_softmax_recurrent(q, k, v, scale, w, causal))
        return 0.5 * (out + window_softmax_chunked(q, k, v, scale, w, causal, self.params.chunk_size))
