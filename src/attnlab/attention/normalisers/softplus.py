"""Softplus attention with length scaling (LSSA) and re-weighting (LSSAR) (Gao & Spratling,
"Softplus Attention with Re-weighting Boosts Length Extrapolation in Large Language Models",
arXiv:2501.13428).

The paper splits softmax into a positivity map and an l1 normalisation and keeps the second:

    q̂, k̂   = q / ‖q‖₂, k / ‖k‖₂                               (cosine scores, no 1/√d)
    u_ij    = softplus(log(d) · log(N_i) · q̂_i·k̂_j) · M_ij       N_i = keys visible to query i
    A_ij    = u_ij / (Σ_j u_ij + ε)                              → LSSA
    r_ij    = ReLU(N_i · A_ij − O_i)^p,  A'_ij = r_ij / (Σ_j r_ij + ε)   → LSSAR

with O_i = 1, except O_i = 0 on the first three rows (N_i ≤ 3), which would otherwise be all zero.
LSSAR rows need not sum to 1: r_ij^p can be far below ε (a row of equal scores gives r = 0 everywhere),
so it is not registered as row-stochastic.

Verification status: the two-stage design, softplus + l1 normalisation, a length-dependent ("invariance
entropy") scale and a re-weighting step are in the paper's abstract. The exact forms above (the product
log d · log N_i on cosine scores, ReLU(N·A − O)^p, the zero offset on three rows, p = 15 as the headline
setting, ε = 1e-8) come from third-party summaries and reviews of the paper that agree with each other; they
are unverified against the paper body (arXiv:2501.13428, method section) and the authors' code, which the
paper's v2 gives as github.com/iminfine/freeatten (neither could be read here). Every constant is a
parameter so the form can be pinned once the paper is checked.

Backends: ``chunked`` (``attnlab.attention.fast.chunked``): both are pointwise in the score once the row's N_i
is known (it is, from the mask), and l1-normalised, so they run in tiles with O(T·chunk) memory: LSSA in one
pass (Σ_j u_ij accumulates beside Σ_j u_ij v_j); LSSAR needs Σ_j u_ij before its re-weighting, so two passes
forward and two backward. On CPU both run on the compiled kernels (``attnlab.attention.fast.native``), where a
block of queries keeps its row of scores, so each direction computes the score products once. With ``qk_norm`` the
layer hands the q, k from before ``prepare`` to the chunked path (``raw_qk``), whose kernel l2-normalises them tile
by tile, so no normalised [B, H, T, D] copy is kept for the backward pass.
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from attnlab.attention.core import compute_dtype, visible_counts
from attnlab.attention.fast.rule_softplus import ReweightedSoftplusRule, SoftplusRule
from attnlab.attention.normalisers.base import NORMALISERS, masked_fill_zero
from attnlab.attention.normalisers.tiled import TiledNormaliser


class SoftplusParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    qk_norm: bool = True  # cosine scores, as in the paper; False: scaled dot products
    length_scale: bool = True  # multiply scores by log(d)·log(N_i)
    eps: float = Field(1e-8, gt=0)


class ReweightedSoftplusParams(SoftplusParams):
    power: float = Field(15.0, gt=0)
    offset_free_rows: int = Field(3, ge=0)


def lssa_weights(scores: Tensor, mask: Tensor | None, d_head: int, length_scale: bool, eps: float) -> Tensor:
    """Softplus of length-scaled scores, masked multiplicatively, then l1-normalised per row."""
    s = scores.to(compute_dtype(scores))
    n = visible_counts(mask, s.shape[-1], s)  # [..., Tq, 1]
    if length_scale:
        s = s * (math.log(d_head) * n.log())
    u = masked_fill_zero(F.softplus(s), mask)
    return u / (u.sum(-1, keepdim=True) + eps)


@NORMALISERS.register(
    "lssa",
    summary="softplus with length scaling log d · log N, l1-normalised",
    paper="Gao & Spratling 2025, arXiv:2501.13428",
    params=SoftplusParams,
    row_stochastic=True,
    backends=("reference", "chunked"),
)
class LSSA(TiledNormaliser):
    def __init__(self, params: SoftplusParams | None = None, site: object | None = None):
        super().__init__()
        self.params = params or SoftplusParams()
        self.d_head = int(getattr(site, "d_head", 0) or 0)
        if self.params.length_scale and self.d_head < 2:
            raise ValueError("lssa length scaling needs a site with d_head >= 2")

    def prepare(self, q: Tensor, k: Tensor, scale: float | None) -> tuple[Tensor, Tensor, float | None]:
        if not self.params.qk_norm:
            return q, k, scale
        return F.normalize(q, dim=-1), F.normalize(k, dim=-1), 1.0

    def forward(self, scores: Tensor, mask: Tensor | None) -> Tensor:
        return lssa_weights(scores, mask, self.d_head, self.params.length_scale, self.params.eps)

    def chunked_rule(self) -> SoftplusRule | ReweightedSoftplusRule:
        """This normaliser's tile algebra for the chunked backend."""
        return SoftplusRule(self.d_head, self.params.length_scale, self.params.eps)

    def normalises_in_kernel(self) -> bool:
        """With ``qk_norm`` the tiles normalise the raw q, k themselves (no normalised copy kept for the backward)."""
        return self.params.qk_norm


@NORMALISERS.register(
    "lssar",
    summary="LSSA then ReLU(N·A − 1)^p re-weighting, l1-normalised",
    paper="Gao & Spratling 2025, arXiv:2501.13428",
    params=ReweightedSoftplusParams,
    backends=("reference", "chunked"),
)
class LSSAR(LSSA):
    params: ReweightedSoftplusParams

    def __init__(self, params: ReweightedSoftplusParams | None = None, site: object | None = None):
        super().__init__(params or ReweightedSoftplusParams(), site)

    def forward(self, scores: Tensor, mask: Tensor | None) -> Tensor:
        p = self.params
        a = lssa_weights(scores, mask, self.d_head, p.length_scale, p.eps)
        n = visible_counts(mask, a.shape[-1], a)
        offset = (n > p.offset_free_rows).to(a.dtype)  # O_i: 0 on the first rows, 1 after
        r = masked_fill_zero((n * a - offset).relu().pow(p.power), mask)
        return r / (r.sum(-1, keepdim=True) + p.eps)

    def chunked_rule(self) -> ReweightedSoftplusRule:
        p = self.params
        return ReweightedSoftplusRule(self.d_head, p.length_scale, p.eps, p.power, p.offset_free_rows)
