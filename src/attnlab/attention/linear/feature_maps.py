"""Feature maps φ of kernel ("linear") attention: κ(q, k) = φ(q) · φ(k), so attention is φ(Q) (φ(K)ᵀ V).

Pure functions where there is nothing to learn, modules where there is:

- ``elu1``: elu(x) + 1 (Katharopoulos et al., "Transformers are RNNs", ICML 2020, arXiv:2006.16236);
- ``identity``: φ(x) = x, the map of Lightning attention / TransNormerLLM and RetNet (signed kernels);
- ``taylor``: Based's second-order Taylor map of exp (Arora et al. 2024, arXiv:2402.18668)
  φ(x) = [1, x·√c, vec(x xᵀ)·c/√2] with c = 1/√d, so φ(q)·φ(k) = 1 + s + s²/2 where s = c·q·k;
- ``hedgehog``: a learnable per-head map z = x W_h + b_h, then [softmax(z), softmax(−z)] (Zhang et al.,
  "The Hedgehog & the Porcupine", ICLR 2024, arXiv:2402.04347), trained by ``hedgehog_distillation_loss``;
- ``performer``: positive random features exp(W x − ‖x‖²/2)/√m, an unbiased estimate of exp(q·k)
  (Choromanski et al., "Rethinking Attention with Performers", ICLR 2021, arXiv:2009.14794).

Layout: x is [..., d] (usually [B, H, T, d_head]); the features replace the last dimension.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnlab.attention.core import build_mask, repeat_kv
from attnlab.registry import Registry

FEATURE_MAPS: Registry = Registry("feature_map")


@FEATURE_MAPS.register("elu1", summary="elu(x) + 1, positive", paper="Katharopoulos et al. 2020, arXiv:2006.16236")
def elu1(x: Tensor) -> Tensor:
    return F.elu(x) + 1.0


@FEATURE_MAPS.register("identity", summary="φ(x) = x (signed kernel q·k)", paper="Qin et al. 2024, arXiv:2401.04658")
def identity(x: Tensor) -> Tensor:
    return x


@FEATURE_MAPS.register(
    "taylor",
    summary="[1, x·√c, vec(xxᵀ)·c/√2]: φ(q)·φ(k) = 1 + s + s²/2, s = c·q·k",
    paper="Arora et al. 2024, arXiv:2402.18668",
)
def taylor(x: Tensor, scale: float | None = None) -> Tensor:
    """Second-order Taylor features, [..., d] → [..., 1 + d + d²]; ``scale`` c defaults to 1/√d."""
    c = x.shape[-1] ** -0.5 if scale is None else scale
    ones = x.new_ones(*x.shape[:-1], 1)
    outer = (x[..., :, None] * x[..., None, :]).flatten(-2)  # [..., d, d] → [..., d²]
    return torch.cat([ones, x * math.sqrt(c), outer * (c / math.sqrt(2.0))], dim=-1)


def hedgehog_features(z: Tensor, eps: float = 1e-6) -> Tensor:
    """[softmax(z), softmax(−z)] over the last dim, clamped at ``eps`` so no kernel value is exactly 0."""
    return torch.cat([z.softmax(-1), (-z).softmax(-1)], dim=-1).clamp(min=eps)


@FEATURE_MAPS.register(
    "hedgehog",
    summary="learnable per-head map, then [softmax(z), softmax(−z)]",
    paper="Zhang et al. 2024, arXiv:2402.04347",
    example={"n_heads": 1, "d_head": 16, "d_feature": 16},
)
class HedgehogFeatureMap(nn.Module):
    """z = x W_h + b_h per head (W_h: d_head × d_feature), then ``hedgehog_features``: 2·d_feature features.

    ``init="linear"`` draws W like ``nn.Linear`` (uniform ±1/√d_head, the authors' kaiming-uniform default);
    ``"identity"`` starts from W = I (rectangular when d_feature ≠ d_head). Biases start at zero.
    """

    def __init__(
        self,
        n_heads: int,
        d_head: int,
        d_feature: int,
        init: Literal["linear", "identity"] = "linear",
        eps: float = 1e-6,
    ):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.empty(n_heads, d_head, d_feature))
        self.bias = nn.Parameter(torch.zeros(n_heads, d_feature))
        with torch.no_grad():
            if init == "identity":
                self.weight.copy_(torch.eye(d_head, d_feature).expand_as(self.weight))
            else:
                bound = d_head**-0.5
                self.weight.uniform_(-bound, bound)

    def forward(self, x: Tensor) -> Tensor:
        # Grouped keys (GQA: fewer heads in x than maps): each key/value head takes the map of the first
        # query head of its group.
        step = self.weight.shape[0] // x.shape[1]
        weight, bias = self.weight[::step].to(x.dtype), self.bias[::step].to(x.dtype)
        z = torch.einsum("bhtd,hdf->bhtf", x, weight) + bias[:, None, :]  # [B, H, T, d_feature]
        return hedgehog_features(z, self.eps)


def hedgehog_distillation_loss(
    teacher_weights: Tensor, q_feat: Tensor, k_feat: Tensor, *, causal: bool = True, eps: float = 1e-12
) -> Tensor:
    """Soft cross-entropy −Σ_j t_ij log a_ij, averaged over rows (batch, head, query).

    t: the teacher's softmax rows [B, H, Tq, Tk]; a_ij = φ(q_i)·φ(k_j) / Σ_j' φ(q_i)·φ(k_j') over the same
    visible keys (``causal``: queries are the last Tq positions). Equals the teacher's entropy exactly when
    a = t, and KL(t ‖ a) more than that otherwise.
    """
    k_feat = repeat_kv(k_feat, q_feat.shape[1] // k_feat.shape[1])
    kernel = q_feat @ k_feat.transpose(-1, -2)  # [B, H, Tq, Tk]
    mask = build_mask(q_feat.shape[2], k_feat.shape[2], q_feat.device, causal, None)
    if mask is not None:
        kernel = kernel.masked_fill(~mask, 0.0)
    student = kernel / (kernel.sum(-1, keepdim=True) + eps)
    terms = teacher_weights * student.clamp(min=eps).log()
    if mask is not None:
        terms = terms.masked_fill(~mask, 0.0)
    return -terms.sum(-1).mean()


def performer_projection(n_features: int, d: int, seed: int = 0, orthogonal: bool = True) -> Tensor:
    """W [m, d]: Gaussian rows, or blocks of orthogonal rows rescaled to Gaussian norms (Performer's ORF)."""
    gen = torch.Generator().manual_seed(seed)
    if not orthogonal:
        return torch.randn(n_features, d, generator=gen, dtype=torch.float64)
    blocks = []
    for _ in range(math.ceil(n_features / d)):
        q, r = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))
        blocks.append((q * r.diagonal().sign()).T)  # d orthonormal rows; the sign fix makes q Haar-uniform
    rows = torch.cat(blocks)[:n_features]
    norms = torch.randn(n_features, d, generator=gen, dtype=torch.float64).norm(dim=-1, keepdim=True)
    return rows * norms


def performer(x: Tensor, projection: Tensor) -> Tensor:
    """exp(W x − ‖x‖²/2) / √m, [..., d] → [..., m]; E[φ(q)·φ(k)] = exp(q·k)."""
    m = projection.shape[0]
    wx = x @ projection.to(x.dtype).T
    return torch.exp(wx - 0.5 * (x * x).sum(-1, keepdim=True)) / math.sqrt(m)


@FEATURE_MAPS.register(
    "performer",
    summary="positive random features exp(Wx − ‖x‖²/2)/√m, fixed seed",
    paper="Choromanski et al. 2021, arXiv:2009.14794",
    example={"d": 16, "n_features": 64},
)
class PerformerFeatureMap(nn.Module):
    """``performer`` with a fixed projection drawn from ``seed`` (a buffer: redrawing changes the function)."""

    def __init__(self, d: int, n_features: int, seed: int = 0, orthogonal: bool = True):
        super().__init__()
        self.register_buffer("projection", performer_projection(n_features, d, seed, orthogonal).float())

    def forward(self, x: Tensor) -> Tensor:
        return performer(x, self.projection)
