"""Kernelized attention with relative positional encoding, computed with the FFT (Luo, Li, Cai, He, Peng,
Zheng, Ke, Wang, Liu, "Stable, Fast and Accurate: Kernelized Attention with Relative Positional Encoding",
NeurIPS 2021, arXiv:2106.12566).

    q̂, k̂ = q/‖q‖, k/‖k‖                          L2-normalised per head (bounds the random-feature variance)
    φ(x) = exp(W x − ‖x‖²/2) / √m                 Performer positive random features, W [m, d_head], fixed seed
    c_{j−i} = exp(b_{h, j−i})                     a learnable scalar per head and relative offset (b = 0 at init)
    a_ij = c_{j−i} φ(q̂_i)·φ(k̂_j) M_ij / Σ_j' (…)  causal: c_{j−i} = 0 for j > i
    z_i = φ(q̂_i)ᵀ [C (Φ_K ⊗ [V, 1])]_i  read as numerator / denominator,   C_ij = c_{j−i} (Toeplitz)

C·X costs O(T log T) with the FFT: embed C in a circulant of size n ≥ 2T − 1 (no wrap-around), multiply in
the frequency domain, keep the first T rows (``toeplitz_matmul_fft``; float32, or float64 for float64 input).
Offsets beyond ``max_len − 1`` share the edge value b_{±(max_len−1)}; ``max_len`` defaults to the site's
training length. Rows are non-negative and sum to 1. Backends: ``reference`` (dense C, the weights a) and
``fft``; the Toeplitz structure is not a decay, so there is no recurrent state and no chunked scan. The RPE
is relative, so no cross-attention; ``scale``, when given, multiplies q̂ before φ.

Verification status: **unverified** beyond the paper's abstract (FFT on the Toeplitz RPE, O(T log T),
stability from RPE); the paper body (arXiv:2106.12566) was not read, and a code search found no authors'
code, only third-party re-implementations. Unverified details, each to be checked against the paper's
method section: the exact normalisation of q, k (plain L2 here), whether c is exp(b) or b itself, orthogonal
vs iid features (orthogonal by default, as in Performer), and the clamp at max_len. Performer: Choromanski
et al. 2021, arXiv:2009.14794.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from attnlab.attention.core import AttnOutput, ScoreMod, compute_dtype, repeat_kv
from attnlab.attention.linear.base import KernelAttention, KernelParams, finish_rows
from attnlab.attention.linear.feature_maps import PerformerFeatureMap
from attnlab.attention.normalisers.base import NORMALISERS


class KernelRPEParams(KernelParams):
    n_features: int = Field(64, gt=0)  # m random features
    max_len: int | None = Field(None, gt=0)  # offsets with |j − i| < max_len get their own b; None: site.seq_len
    seed: int = 0
    orthogonal: bool = True


def toeplitz_matmul_fft(c: Tensor, x: Tensor) -> Tensor:
    """y_i = Σ_j c_{j−i} x_j for c [H, 2T−1] (offsets −(T−1) … T−1) and x [B, H, T, N], via the FFT."""
    t = x.shape[2]
    n = 2 * t  # ≥ 2T − 1: a circular convolution of this length never wraps around
    g = c.new_zeros(c.shape[0], n)  # g_u = c_{−u}: u = i − j ≥ 0 at index u, u < 0 at index n + u
    g[:, :t] = c[:, :t].flip(-1)
    g[:, n - t + 1 :] = c[:, t:].flip(-1)
    spectrum = torch.fft.rfft(g, n=n)[None, :, :, None] * torch.fft.rfft(x, n=n, dim=2)  # [B, H, n/2 + 1, N]
    return torch.fft.irfft(spectrum, n=n, dim=2)[:, :, :t]


@NORMALISERS.register(
    "kernel_rpe_fft",
    summary="Performer features on L2-normalised q, k with a Toeplitz RPE exp(b_{j−i}), FFT",
    paper="Luo et al. 2021, arXiv:2106.12566",
    params=KernelRPEParams,
    example={"n_features": 16},
    row_stochastic=True,
    cross=False,
    backends=("reference", "fft"),
    score_mod=False,
    kernel=True,
)
class KernelRPE(KernelAttention):
    name = "kernel_rpe_fft"
    params: KernelRPEParams

    def __init__(self, params: KernelRPEParams | None = None, site: object | None = None):
        super().__init__(params or KernelRPEParams(), site)
        p = self.params
        if self.d_head < 1:
            raise ValueError("kernel_rpe_fft needs a site with n_heads and d_head")
        self.max_len = p.max_len or getattr(site, "seq_len", None) or 512
        self.feature_map = PerformerFeatureMap(self.d_head, p.n_features, p.seed, p.orthogonal)
        self.rpe = nn.Parameter(torch.zeros(self.n_heads, 2 * self.max_len - 1))  # b_h at offsets −(L−1) … L−1

    def features(self, q: Tensor, k: Tensor, scale: float | None) -> tuple[Tensor, Tensor, float | None]:
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        return self.feature_map(q if scale is None else q * scale), self.feature_map(k), 1.0

    def coefficients(self, offsets: Tensor, like: Tensor) -> Tensor:
        """c = exp(b_h at offset j − i), offsets clamped to ±(max_len − 1): [H, *offsets.shape]."""
        index = offsets.clamp(-(self.max_len - 1), self.max_len - 1) + self.max_len - 1
        return self.rpe.to(like.dtype)[:, index].exp()

    def positional(self, t_q: int, t_k: int, like: Tensor) -> Tensor:
        i = torch.arange(t_k - t_q, t_k, device=like.device)[:, None]
        j = torch.arange(t_k, device=like.device)[None, :]
        return self.coefficients(j - i, like)  # [H, Tq, Tk]; the mask zeroes the future when causal

    def attend_fft(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        *,
        normaliser: object = None,
        score_mod: ScoreMod | None = None,
        causal: bool = True,
        scale: float | None = None,
        window: int | None = None,
    ) -> AttnOutput:
        """O(T log T · m · d_v): the Toeplitz products C Φ_K ⊗ [V, 1] by FFT over all Tk positions."""
        self.reject_score_mod(score_mod)
        if window is not None:
            raise ValueError(
                f"normaliser {self.name!r}: backend 'fft' does not support AttentionConfig.window={window}; "
                "use backend='reference'"
            )
        dtype = compute_dtype(q)
        n_rep = q.shape[1] // k.shape[1]
        q, k, v0 = q.to(dtype), repeat_kv(k, n_rep).to(dtype), repeat_kv(v, n_rep).to(dtype)
        (b, h, t_q, m), t_k = q.shape, k.shape[2]
        scale = m**-0.5 if scale is None else scale
        v1 = torch.cat([v0, v0.new_ones(b, h, t_k, 1)], dim=-1)  # [B, H, Tk, E + 1]
        x = (k[..., :, None] * v1[..., None, :]).flatten(-2)  # [B, H, Tk, m·(E + 1)]
        offsets = torch.arange(-(t_k - 1), t_k, device=q.device)
        c = self.coefficients(offsets, x)  # [H, 2Tk − 1]
        if causal:
            c = c.masked_fill(offsets > 0, 0.0)
        y = toeplitz_matmul_fft(c, x)[:, :, t_k - t_q :].unflatten(-1, (m, -1))  # [B, H, Tq, m, E + 1]
        sums = torch.einsum("bhqm,bhqme->bhqe", q * scale, y)
        out = finish_rows(sums[..., :-1], sums[..., -1:], "l1", self.params.eps)
        return AttnOutput(out.to(v.dtype), None, None)
