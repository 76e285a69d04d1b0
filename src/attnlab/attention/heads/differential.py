"""Differential attention (Ye, Dong, Xia, Sun, Zhu, Huang, Wei, "Differential Transformer", 2024,
arXiv:2410.05258, ICLR 2025).

Each differential head i has two query/key halves (q_i1, k_i1), (q_i2, k_i2) of size d and one value of
size 2d. It subtracts the second attention map from the first, which cancels the attention both maps put
on irrelevant keys:

    A_ij     = normaliser(q_ij k_ijᵀ / √d)                 j = 1, 2; softmax in the paper, any normaliser here
    λ        = exp(λ_q1·λ_k1) − exp(λ_q2·λ_k2) + λ_init     λ_q*, λ_k* ∈ R^d, init N(0, 0.1²), shared by all heads
    λ_init   = 0.8 − 0.6 · exp(−0.3 · layer_idx)            (layer_idx 0-based, as in the code)
    W_i      = A_i1 − λ · A_i2                               signed; with softmax, rows sum to 1 − λ
    o_i      = RMSNorm(W_i v_i) · (1 − λ_init)               one RMSNorm over 2d (eps 1e-5, learned gain) per head
    out      = concat_i(o_i) W_o

How heads are halved (the head count or the head dim, not both: halving both would quarter the width and
the parameter count, and the comparison with the baseline Transformer would no longer be like for like;
the authors' code passes "num_heads set to half of Transformer's num_heads"): the site keeps
d_model = D and its n_heads = H, the baseline Transformer's head count. Differential attention uses H/2
heads; each has two q/k halves of size d = D/H (the baseline head dim) and a value of size 2d. So q, k and
v are D wide and the parameter count equals MHA's, as in the authors' code (``num_heads`` = baseline / 2,
``head_dim = D / num_heads / 2``). H must be even.

Layout at the module boundary: ``project`` gives q [B, H, T, d] and k [B, H, S, d], where head 2i + j is
half j of differential head i (the authors' ``view(B, T, 2H', d)``), and v [B, H/2, S, 2d]. The position
encoding therefore rotates every q/k half as an ordinary head of size d (the authors apply RoPE to the
(B, T, 2H', d) view), so no ``rotate`` of our own is needed; ALiBi gives each half its own slope. The KV
cache stores the same tensors. ``attend`` returns the 2·(H/2) half-map scores as ``scores`` and the H/2
differential maps W as ``weights`` (hook_pattern), and W v *before* the sub-norm as ``out`` (hook_z);
``combine`` applies the sub-norm, the (1 − λ_init) factor and W_o.

Source followed: microsoft/unilm ``Diff-Transformer/multihead_diffattn.py`` (the naive version), read line
by line. Differences: A_i1, A_i2 come from the configured normaliser (softmax by default, so the paper's
model is the default); the authors' RoPE is the interleaved kind, attnlab's default is not
(``position_args={"interleaved": True}`` matches them). Not supported: GQA (in the authors' ``repeat_kv``
both maps of a differential head then read the *same* key half; we did not copy that). Unverified: the
paper's claims (matching a Transformer with ~65% of the size, fewer outliers) are not reproduced here.
"""

from __future__ import annotations

import math

import torch
from pydantic import BaseModel, ConfigDict
from torch import Tensor, nn

from attnlab.attention.core import AttnOutput, Normaliser, ScoreMod, attend_reference, compute_dtype
from attnlab.attention.heads.base import HEADS, Projection, merge_heads, split_heads
from attnlab.errors import ConfigError


def lambda_init_fn(layer_idx: int) -> float:
    """λ_init = 0.8 − 0.6·exp(−0.3·l): 0.20, 0.36, 0.47, 0.56, ... for layers 0, 1, 2, 3, ..."""
    return 0.8 - 0.6 * math.exp(-0.3 * layer_idx)


class DifferentialParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    lambda_init: float | None = None  # None: 0.8 − 0.6·exp(−0.3·layer_idx), the paper's schedule

    def check_site(self, site, field: str) -> None:
        if site.n_heads % 2:
            raise ConfigError(
                "n_heads",
                site.n_heads,
                "differential attention pairs the baseline's heads: n_heads must be even",
                [h for h in range(2, site.d_model + 1, 2) if site.d_model % h == 0 and h <= 64],
            )


class DifferentialHeads(nn.Module):
    """H/2 differential heads: two q/k halves of size d and a value of size 2d each; bias-free projections."""

    def __init__(self, d_model: int, n_heads: int, layer_idx: int, lambda_init: float | None = None):
        super().__init__()
        if n_heads % 2:
            raise ValueError(f"differential attention needs an even n_heads; got {n_heads}")
        self.n_halves = n_heads  # q/k heads of size d: two per differential head
        self.n_heads = n_heads // 2  # differential heads
        self.d_head = d_model // n_heads  # d, the size of one q/k half
        self.q_proj = nn.Linear(d_model, n_heads * self.d_head, bias=False)
        self.k_proj = nn.Linear(d_model, n_heads * self.d_head, bias=False)
        self.v_proj = nn.Linear(d_model, n_heads * self.d_head, bias=False)
        self.o_proj = nn.Linear(n_heads * self.d_head, d_model, bias=False)
        self.lambda_init = lambda_init_fn(layer_idx) if lambda_init is None else lambda_init
        d = self.d_head
        self.lambda_q1, self.lambda_k1, self.lambda_q2, self.lambda_k2 = (
            nn.Parameter(torch.randn(d) * 0.1) for _ in range(4)
        )
        self.subln = nn.RMSNorm(2 * d, eps=1e-5, elementwise_affine=True)

    def project(self, x: Tensor, context: Tensor | None = None) -> Projection:
        """x [B, T, D] → q [B, H, T, d], k [B, H, S, d] (head 2i + j = half j of head i), v [B, H/2, S, 2d]."""
        source = x if context is None else context
        q = split_heads(self.q_proj(x), self.n_halves)
        k = split_heads(self.k_proj(source), self.n_halves)
        v = split_heads(self.v_proj(source), self.n_heads)
        return Projection(q, k, v)

    def lambda_full(self, dtype: torch.dtype) -> Tensor:
        """λ = exp(λ_q1·λ_k1) − exp(λ_q2·λ_k2) + λ_init, a scalar shared by the layer's heads."""
        dot1 = (self.lambda_q1 * self.lambda_k1).sum().to(dtype)
        dot2 = (self.lambda_q2 * self.lambda_k2).sum().to(dtype)
        return dot1.exp() - dot2.exp() + self.lambda_init

    def attend(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        *,
        normaliser: Normaliser,
        score_mod: ScoreMod | None = None,
        causal: bool = True,
        scale: float | None = None,
        window: int | None = None,
        mask: Tensor | None = None,
    ) -> AttnOutput:
        """Two maps per head from the normaliser, W = A1 − λ·A2, out = W v (before the sub-norm)."""
        b, _, t_q, _ = q.shape
        # The reference gives both maps of every half; values are applied to their difference below.
        no_values = k.new_empty(*k.shape[:-1], 0)  # [B, H, S, 0]
        res = attend_reference(
            q,
            k,
            no_values,
            normaliser=normaliser,
            score_mod=score_mod,
            causal=causal,
            scale=scale,
            window=window,
            mask=mask,
        )
        a = res.weights.reshape(b, self.n_heads, 2, t_q, -1)  # [B, H, Tq, S] → [B, H/2, 2, Tq, S]
        weights = a[:, :, 0] - self.lambda_full(a.dtype) * a[:, :, 1]  # [B, H/2, Tq, S]
        out = (weights @ v.to(weights.dtype)).to(v.dtype)  # [B, H/2, Tq, 2d]
        return AttnOutput(out, res.scores, weights)

    def combine(self, z: Tensor, x: Tensor) -> Tensor:
        """z = W v [B, H/2, T, 2d] → per-head RMSNorm · (1 − λ_init) → [B, T, D]."""
        normed = self.subln(z.to(compute_dtype(z))) * (1 - self.lambda_init)  # bf16 z: normalise in float32
        return self.o_proj(merge_heads(normed.to(z.dtype)))


@HEADS.register(
    "differential",
    summary="differential attention: A1 − λ·A2 over H/2 head pairs, per-head RMSNorm",
    paper="Ye et al. 2024, arXiv:2410.05258",
    params=DifferentialParams,
    signed=True,
    kernel_ok=False,
)
def build_differential(params: DifferentialParams, site) -> DifferentialHeads:
    return DifferentialHeads(site.d_model, site.n_heads, site.layer_idx, params.lambda_init)
