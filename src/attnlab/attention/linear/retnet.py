"""Retention, RetNet's token mixer (Sun, Dong, Huang, Ma, Xia, Xue, Wang, Wei, "Retentive Network: A Successor
to Transformer for Large Language Models", 2023, arXiv:2307.08621).

    γ_h = 1 − 2^{−5−h}                          h = 0 … H−1  (slope s_h = −log γ_h)
    D_ij = γ_h^{i−j} for j ≤ i, else 0
    R = (Q Kᵀ / √d) ⊙ D̃,     D̃_ij = D_ij / √(Σ_j D_ij)                 (the paper's "D normalisation")
    R̃_ij = R_ij / max(|Σ_j R_ij|, 1)                                    (the "retention score normalisation")
    out = GroupNorm_h(R̃ V) = per-head RMSNorm over d_head, no affine, ε = 1e-6

Weights R̃ are signed and rows do not sum to 1. The per-head norm lives in ``attend`` (every backend applies
it; ``output_norm="none"`` removes it); RetNet's swish gate is the heads axis' business (``heads="gated"``
has a sigmoid gate), its xPos rotation the position axis' (``rope`` is the closest). ``scale`` replaces 1/√d.

Verified against the authors' code (microsoft/torchscale ``architecture/retnet.py`` RetNetRelPos and
``component/multiscale_retention.py``): decay log(1 − 2^{−5−arange(H)}); mask / mask.sum(-1).sqrt(); k scaled
by d^{−1/2}; qk / |Σ qk|.clamp(min=1); group norm = ``RMSNorm(head_dim, elementwise_affine=False)``. Two
deliberate differences: torchscale detaches the |Σ R| denominator (we keep it differentiable, so gradcheck
holds), and its token-by-token path drops the max(|Σ R|, 1) step (harmless there, as both normalisations are
positive per-row scalars that the following RMSNorm cancels up to its ε); our recurrent and chunked paths
carry the denominator Σ_j D̃_ij q_i·k_j in the state and reproduce the parallel form exactly.

Backends: ``reference``, ``recurrent``, ``chunked``; Σ_j D_ij in closed form (1 − γ^{n})/(1 − γ). Non-causal
use takes the symmetric decay γ^{|i−j|} (an attnlab extension; RetNet is a decoder). The decay is relative,
so no cross-attention.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import Tensor

from attnlab.attention.linear.base import SCAN_BACKENDS, ScanKernelAttention, ScanParams, rms_normalise
from attnlab.attention.normalisers.base import NORMALISERS


class RetNetParams(ScanParams):
    output_norm: Literal["per_head", "none"] = "per_head"
    norm_eps: float = Field(1e-6, gt=0)


def retnet_gammas(n_heads: int) -> Tensor:
    """γ_h = 1 − 2^{−5−h}, float64 [H]."""
    return 1.0 - 2.0 ** (-5.0 - torch.arange(n_heads, dtype=torch.float64))


@NORMALISERS.register(
    "retnet",
    summary="retention: (QKᵀ/√d ⊙ D̃) with D = γ^{i−j}, |row sum| clamp, per-head norm",
    paper="Sun et al. 2023, arXiv:2307.08621",
    params=RetNetParams,
    example={"chunk_size": 8},
    signed=True,
    cross=False,
    backends=SCAN_BACKENDS,
    score_mod=False,
    kernel=True,
)
class Retention(ScanKernelAttention):
    name = "retnet"
    rows = "retention"
    params: RetNetParams

    def __init__(self, params: RetNetParams | None = None, site: object | None = None):
        super().__init__(params or RetNetParams(), site)
        self.register_buffer("slopes", -torch.log(retnet_gammas(self.n_heads)).float(), persistent=False)

    def features(self, q: Tensor, k: Tensor, scale: float | None) -> tuple[Tensor, Tensor, float | None]:
        return q, k, (q.shape[-1] ** -0.5 if scale is None else scale)

    def output_norm(self, out: Tensor) -> Tensor:
        if self.params.output_norm == "none":
            return out
        return rms_normalise(out, True, self.params.norm_eps)
