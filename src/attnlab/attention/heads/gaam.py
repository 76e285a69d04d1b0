"""Gaussian adaptive attention, GAAM (Ioannides, Chadha, Elkins, "Gaussian Adaptive Attention is All You
Need: Robust Contextual Representations Across Multiple Modalities", 2024, arXiv:2401.11143; later versions
whose abstract names the mechanism DAAM, the "Multi-Head Density Adaptive Attention Mechanism"; title,
authors and abstract checked against the arXiv listing of 2401.11143).

GAAM does not mix tokens. It is a feature-recalibration gate: each value is scaled by how typical it is
under Gaussians fitted, on the fly, to the statistics of its own feature along one axis. Here it gates each
attention head's output z_h [B, T, d] along time, per feature, before the output projection:

    μ_t, σ²_t  = mean and variance of z_s over the statistics window V_t    (per batch, head and feature)
                 σ²_t = Σ_{s∈V_t} (z_s − μ_t)² / max(|V_t| − 1, 1) + ε
    y_{g,s,t}  = (z_s − (μ_t + δ_g)) / σ_t                                  g = 1 … G, δ_g learned (init 0)
    N_{s,t}    = Π_g exp(−y_{g,s,t}² / (2 c_g²)) / √(2π c_g²)               c_g = softplus(ĉ_g) > 0
    m_t        = N_{t,t} / max(Σ_{s∈V_t} N_{s,t}, ε)                        the gate of position t
    z'_t       = z_t + z_t · m_t    (``residual=True``, GaussianBlock's x ← MHGAAM(x) + x)   or   z_t · m_t

V_t = all positions for a non-causal site (exactly the authors' module with ``norm_axis`` = time), and the
prefix s ≤ t for a causal site: the gate of position t is the authors' gate computed on z_1 … z_t and read
at its last position, so no future token leaks in (statistics over the whole sequence are not causal: the
mean and variance at position t would include later tokens).
This costs O(T²·d) per head (the normalising sum is over pairs s ≤ t with t's statistics), like materialising
the attention matrix d times. ``gaussian_gate_reference`` writes the formula out (G Gaussians per pair, the
two-pass window variance) and is the spec; ``gaussian_gate``, the path the module runs, folds the G Gaussians
into one (a product of Gaussians in one variable is one Gaussian) and takes prefix statistics from running sums,
so each pair costs one exponential; it sums the pairs block by block of query positions and recomputes them in
its backward pass (``WindowedPairSum``), so no [B, H, T, T, d] tensor is held and a causal block skips the keys
after it. It is tested against the reference (output and gradients in float64, float32 and bf16 within their
rounding bounds, in blocks of one to three positions).
δ_g and c_g are per head (the authors have one GaussianAdaptiveAttention module, with its own δ, c ∈ R^G, per
head); they are shared by the head's d features and positions.

Source followed: gioannides/Gaussian-Adaptive-Attention ``gaussian_adaptive_attention/GaussianBlock.py``
(HEAD 145d1bc), read line by line: the *product* over G Gaussians including 1/√(2π c²) (not the README's
weighted mixture), unbiased variance + ε (1e-8), normalisation by ``sum.clamp(min=eps)`` along the statistics
axis, δ initialised to 0 and c to exp(N(0, 1)). Our changes: c goes through softplus (initialised so that
softplus(ĉ) = exp(N(0, 1))), which keeps it positive (as c → 0 the density 1/√(2π c²) blows up); the variance
divides by max(n − 1, 1) so a one-element window (the first causal position) gives σ² = ε instead of NaN;
the prefix statistics for causal sites; the padding-value masking is dropped (attnlab has no padding). The
authors split the input into heads *along the statistics axis*; here heads are attnlab's attention heads
(slices of d features) and the statistics run along time (``norm_axis`` = time). Where in a Transformer
the gate belongs is not stated in the code (GaussianBlock is a stand-alone stack of gates); gating the
attention output, per head, is our choice.

KV cache: not supported. The gate of a new token needs the past attention outputs z_s, which the cache does
not keep, so the capability record says ``kv_cache=False`` and ``TransformerLM.new_cache`` rejects the model.

Unverified: the paper body was not read; the claimed gains (the abstract's "up to approximately +20% (abs.)
in accuracy" over attention baselines in speech, vision and text classification) are not reproduced. A
product of Gaussians in one variable is one Gaussian (the exponents add: a sum of quadratics in z is one
quadratic), so G > 1 adds little.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from attnlab.attention.core import compute_dtype
from attnlab.attention.heads.base import HEADS, MultiHead, check_kv_heads


class GAAMParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    n_gaussians: int = Field(2, gt=0)  # G
    residual: bool = True  # z + z·m (GaussianBlock) or z·m (the bare MHGAAM module)
    eps: float = Field(1e-8, gt=0)
    n_kv_heads: int | None = Field(None, gt=0)

    def check_site(self, site, field: str) -> None:
        check_kv_heads(self.n_kv_heads, site, field)


def window_statistics(z: Tensor, causal: bool, eps: float) -> tuple[Tensor, Tensor]:
    """Each position's window mean μ_t and variance σ²_t [B, H, T, d].

    Causal windows are prefixes: running sums of z − z_0 (shifting by the first value keeps the one-pass
    variance from cancelling when the mean is large against the spread)."""
    t = z.shape[2]
    if not causal:
        mean = z.mean(2, keepdim=True)
        var = (z - mean).square().sum(2, keepdim=True) / max(t - 1, 1) + eps
        return mean.expand_as(z), var.expand_as(z)
    n = torch.arange(1, t + 1, dtype=z.dtype, device=z.device)[:, None]  # [T, 1] window sizes
    x = z - z[:, :, :1]
    mean_x = x.cumsum(2) / n
    spread = (x.square().cumsum(2) - n * mean_x.square()).clamp(min=0)  # Σ (z_s − μ_t)² over s ≤ t
    return mean_x + z[:, :, :1], spread / (n - 1).clamp(min=1) + eps


def gaussian_gate(z: Tensor, offsets: Tensor, c: Tensor, causal: bool, eps: float) -> Tensor:
    """The gate m [B, H, T, d] of z [B, H, T, d]; offsets δ and widths c are [H, G]. The fast path.

    The product of the G Gaussians is one Gaussian in z_s (the exponents add up to one quadratic), so
    N_{s,t} = K_t · exp(−a / (2σ²_t) · (z_s − μ_t − b/a)²) with a = Σ_g 1/c_g², b = Σ_g δ_g/c_g², and
    K_t = Π_g (2π c_g²)^(−1/2) · exp(−(Σ_g δ_g²/c_g² − b²/a) / (2σ²_t)) independent of s. Only the second factor is
    computed for every pair (t, s) (``WindowedPairSum``): one exponential per pair and feature, where
    ``gaussian_gate_reference`` takes G of them and keeps several pair-sized intermediates. K_t multiplies both
    sides of the ratio and is applied per position, so the result (including the ε clamp) is the reference's up to
    rounding."""
    mean, var = window_statistics(z, causal, eps)
    inv_c2 = c.square().reciprocal()  # [H, G]
    a, b = inv_c2.sum(1), (offsets * inv_c2).sum(1)  # [H]
    spread = (offsets.square() * inv_c2).sum(1) - b.square() / a  # ≥ 0 (Cauchy–Schwarz)
    log_norm = -0.5 * torch.log(2 * math.pi * c.square()).sum(1)  # log Π_g (2π c_g²)^(−1/2)
    per_head = (1, -1, 1, 1)
    centre = mean + (b / a).view(per_head)  # [B, H, T, d]
    neg_rate = a.view(per_head) / (-2 * var)  # [B, H, T, d]
    scale = torch.exp(log_norm.view(per_head) - spread.view(per_head) / (2 * var))  # K_t
    own = (neg_rate * (z - centre).square()).exp()  # the pair (t, t)
    return scale * own / (scale * WindowedPairSum.apply(z, centre, neg_rate, causal)).clamp(min=eps)


PAIR_BLOCK = 1 << 18  # elements of one block of pairs [B, H, C, T(s), d] on a CPU: 1 MiB in float32, inside L2
ACCELERATOR_BLOCKS = 64  # a GPU's blocks are this many times larger (fewer, fuller kernel launches)


def pair_blocks(z: Tensor, causal: bool) -> Iterator[tuple[int, int, int, Tensor | None]]:
    """Blocks of C query positions [t0, t1), the keys s < s1 they can see, and the window mask [C, s1, 1] (None
    where every pair counts)."""
    batch, heads, t, d = z.shape
    block = PAIR_BLOCK if z.device.type == "cpu" else PAIR_BLOCK * ACCELERATOR_BLOCKS
    rows = max(1, block // max(batch * heads * t * d, 1))
    for t0 in range(0, t, rows):
        t1 = min(t0 + rows, t)
        if not causal:
            yield t0, t1, t, None
            continue
        keys = torch.arange(t1, device=z.device)
        mask = keys[None, :] <= torch.arange(t0, t1, device=z.device)[:, None]  # s ≤ t
        yield t0, t1, t1, mask.to(z.dtype)[:, :, None]


class WindowedPairSum(torch.autograd.Function):
    """S_t = Σ_{s ∈ V_t} exp(ρ_t (z_s − centre_t)²) [B, H, T, d] (ρ = neg_rate ≤ 0), block by block of query
    positions, so no [B, H, T, T, d] tensor is ever held: the backward pass recomputes each block's
    exponentials. A causal block skips the keys after its last position. Gradients, with E_ts the pair's term
    and D_ts = z_s − centre_t: ∂S_t/∂ρ_t = Σ_s E D², ∂S_t/∂centre_t = −2ρ_t Σ_s E D, ∂S_t/∂z_s = 2ρ_t E D."""

    @staticmethod
    def forward(ctx, z: Tensor, centre: Tensor, neg_rate: Tensor, causal: bool) -> Tensor:  # type: ignore[override]
        out = torch.empty_like(z)
        for t0, t1, s1, mask in pair_blocks(z, causal):
            diff = z[:, :, None, :s1] - centre[:, :, t0:t1, None]  # [B, H, C, s1, d]
            terms = diff.square_().mul_(neg_rate[:, :, t0:t1, None]).exp_()
            out[:, :, t0:t1] = (terms if mask is None else terms.mul_(mask)).sum(3)
        ctx.save_for_backward(z, centre, neg_rate)
        ctx.causal = causal
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor, Tensor, None]:  # type: ignore[override]
        z, centre, neg_rate = ctx.saved_tensors
        grad_z, grad_centre, grad_rate = torch.zeros_like(z), torch.empty_like(z), torch.empty_like(z)
        for t0, t1, s1, mask in pair_blocks(z, ctx.causal):
            rate = neg_rate[:, :, t0:t1, None]
            diff = z[:, :, None, :s1] - centre[:, :, t0:t1, None]
            terms = diff.square().mul_(rate).exp_()
            weighted = (terms if mask is None else terms.mul_(mask)).mul_(grad[:, :, t0:t1, None]).mul_(diff)
            grad_rate[:, :, t0:t1] = (weighted * diff).sum(3)
            grad_centre[:, :, t0:t1] = -2 * neg_rate[:, :, t0:t1] * weighted.sum(3)
            grad_z[:, :, :s1] += weighted.mul_(2 * rate).sum(2)
        return grad_z, grad_centre, grad_rate, None


def gaussian_gate_reference(z: Tensor, offsets: Tensor, c: Tensor, causal: bool, eps: float) -> Tensor:
    """The gate, written as the formula reads (the spec that ``gaussian_gate`` is tested against).

    Pairs (t, s): position t's statistics evaluated at every z_s in its window, [B, H, T(t), T(s), d].
    """
    t = z.shape[2]
    window = torch.ones(t, t, dtype=torch.bool, device=z.device)  # window[t, s]: z_s counts for position t
    if causal:
        window = window.tril()
    w = window.to(z.dtype)[None, None, :, :, None]  # [1, 1, T, T, 1]
    n = w.sum(3)  # [1, 1, T, 1] window sizes
    pairs = z[:, :, None, :, :].expand(-1, -1, t, -1, -1)  # [B, H, T(t), T(s), d]: z_s
    mean = (w * pairs).sum(3) / n  # [B, H, T, d]
    centred = pairs - mean[:, :, :, None]  # z_s − μ_t
    var = (w * centred.square()).sum(3) / (n - 1).clamp(min=1) + eps  # [B, H, T, d]
    std = var.sqrt()[:, :, :, None]  # [B, H, T, 1, d]
    density = torch.ones_like(pairs)
    for g in range(offsets.shape[1]):
        delta, width = offsets[:, g].view(1, -1, 1, 1, 1), c[:, g].view(1, -1, 1, 1, 1)
        y = (centred - delta) / std
        density = density * torch.exp(-y.square() / (2 * width.square())) / torch.sqrt(2 * math.pi * width.square())
    density = density * w  # zero outside the window
    own = density.diagonal(dim1=2, dim2=3).movedim(-1, 2)  # N_{t,t}: [B, H, d, T] → [B, H, T, d]
    return own / density.sum(3).clamp(min=eps)


class GaussianGatedHeads(MultiHead):
    """Multi-head attention whose head outputs pass through the multi-head Gaussian gate before W_o."""

    def __init__(self, d_model: int, n_heads: int, n_kv_heads: int, params: GAAMParams, causal: bool):
        super().__init__(d_model, n_heads, n_kv_heads)
        self.causal, self.residual, self.eps = causal, params.residual, params.eps
        g = params.n_gaussians
        self.mean_offsets = nn.Parameter(torch.zeros(n_heads, g))  # δ
        c0 = torch.randn(n_heads, g).exp()  # the authors' c init, exp(N(0, 1))
        self.c_raw = nn.Parameter(c0 + torch.log(-torch.expm1(-c0)))  # softplus⁻¹(c0)

    def widths(self) -> Tensor:
        return F.softplus(self.c_raw)  # c [H, G]

    def gate(self, z: Tensor) -> Tensor:
        """The gate m of head outputs z [B, H, T, d], in z's compute precision."""
        dtype = compute_dtype(z)
        return gaussian_gate(z.to(dtype), self.mean_offsets.to(dtype), self.widths().to(dtype), self.causal, self.eps)

    def combine(self, z: Tensor, x: Tensor) -> Tensor:
        m = self.gate(z)
        gated = z * m + z if self.residual else z * m
        return super().combine(gated.to(z.dtype), x)


@HEADS.register(
    "gaam",
    summary="multi-head Gaussian gate on each head's output (prefix statistics when causal)",
    paper="Ioannides et al. 2024, arXiv:2401.11143",
    params=GAAMParams,
    kv_cache=False,
)
def build_gaam(params: GAAMParams, site) -> GaussianGatedHeads:
    return GaussianGatedHeads(site.d_model, site.n_heads, params.n_kv_heads or site.n_heads, params, site.causal)
