"""Clipped softmax (Bondarenko, Nagel, Blankevoort, "Quantizable Transformers: Removing Outliers by
Helping Attention Heads Do Nothing", NeurIPS 2023, arXiv:2306.12929).

    w_ij = clip((ζ − γ) · softmax(s)_ij + γ, 0, 1)        γ ≤ 0, ζ ≥ 1

With γ < 0 a head can give a key an exact zero without pushing its score to −∞, which is what keeps
outliers from growing. Rows need not sum to 1. Defaults follow the authors' BERT script
(``clipped(-.025:1)``: γ = −0.025, ζ = 1); ``alpha`` gives their OPT form γ = −α / T with T the
training sequence length. Source followed: Qualcomm-AI-research/outlier-free-transformers.

Backends: ``chunked``: two passes over key tiles (the row logsumexp, then the clipped weights); the backward
needs Σ_j p_ij dp_ij first, so it also takes two passes.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, model_validator
from torch import Tensor

from attnlab.attention.core import compute_dtype
from attnlab.attention.fast.rule_clipped import ClippedSoftmaxRule
from attnlab.attention.normalisers.base import NORMALISERS
from attnlab.attention.normalisers.tiled import TiledNormaliser


class ClippedSoftmaxParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    gamma: float = -0.025
    zeta: float = 1.0
    alpha: float | None = None  # if set: gamma = -alpha / seq_len (overrides gamma)

    @model_validator(mode="after")
    def _stretch_outwards(self) -> ClippedSoftmaxParams:
        if self.gamma > 0:
            raise ValueError(f"gamma={self.gamma} must be <= 0 (allowed: gamma <= 0)")
        if self.zeta < 1:
            raise ValueError(f"zeta={self.zeta} must be >= 1 (allowed: zeta >= 1)")
        return self


@NORMALISERS.register(
    "clipped_softmax",
    summary="clip((ζ−γ)·softmax + γ, 0, 1)",
    paper="Bondarenko et al. 2023, arXiv:2306.12929",
    params=ClippedSoftmaxParams,
    backends=("reference", "chunked"),
)
class ClippedSoftmax(TiledNormaliser):
    def __init__(self, params: ClippedSoftmaxParams | None = None, site: object | None = None):
        super().__init__()
        params = params or ClippedSoftmaxParams()
        seq_len = getattr(site, "seq_len", None)
        if params.alpha is not None:
            if not seq_len:
                raise ValueError("clipped_softmax with alpha needs a site with seq_len")
            self.gamma = -params.alpha / seq_len
        else:
            self.gamma = params.gamma
        self.zeta = params.zeta

    def chunked_rule(self) -> ClippedSoftmaxRule:
        """Clipped softmax in tiles, two passes."""
        return ClippedSoftmaxRule(self.gamma, self.zeta)

    def forward(self, scores: Tensor, mask: Tensor | None) -> Tensor:
        s = scores.to(compute_dtype(scores))
        if mask is not None:
            s = s.masked_fill(~mask, float("-inf"))
        stretched = (self.zeta - self.gamma) * s.softmax(dim=-1) + self.gamma
        w = stretched.clamp(0.0, 1.0)
        # γ < 0 already sends masked keys (softmax 0) to clip(γ) = 0; keep it exact for γ = 0 too.
        return w if mask is None else w.masked_fill(~mask, 0.0)

    def extra_repr(self) -> str:
        return f"gamma={self.gamma:.4f}, zeta={self.zeta}"
