"""Sigmoid attention (Ramapuram et al., "Theory, Analysis, and Best Practices for Sigmoid
Self-Attention", ICLR 2025, arXiv:2409.04431).

    w_ij = σ(s_ij + b)  for visible j, 0 otherwise;     b = −log(n)

No row normalisation: rows do not sum to 1. ``n`` is the training sequence length (the paper's
recommended fixed bias, a buffer, not learned); pass ``bias`` to override. Source followed: the
authors' reference code (apple/ml-sigmoid-attention, ``attention_simulator``), which masks first
(to −max, so σ → 0) and then adds the bias; here masked keys get an exact zero instead.

Backends: ``chunked`` (``attnlab.attention.fast.chunked``): tiles of scores, never the T×T matrix, with a
custom backward (ds = σ(1 − σ)·dw); on CPU compiled (``attnlab.attention.fast.native``). The bias is a fixed
number (the paper's recommendation), not learned.
"""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict
from torch import Tensor

from attnlab.attention.core import compute_dtype
from attnlab.attention.fast.rule_pointwise import PointwiseRule
from attnlab.attention.normalisers.base import NORMALISERS, masked_fill_zero
from attnlab.attention.normalisers.tiled import TiledNormaliser


class SigmoidParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    bias: float | None = None  # None: −log(seq_len), the paper's recommendation


@NORMALISERS.register(
    "sigmoid",
    summary="elementwise sigmoid with bias −log n, no row normalisation",
    paper="Ramapuram et al. 2024, arXiv:2409.04431",
    params=SigmoidParams,
    backends=("reference", "chunked"),
)
class Sigmoid(TiledNormaliser):
    def __init__(self, params: SigmoidParams | None = None, site: object | None = None):
        super().__init__()
        params = params or SigmoidParams()
        seq_len = getattr(site, "seq_len", None)
        if params.bias is not None:
            self.bias = params.bias
        elif seq_len:
            self.bias = -math.log(seq_len)
        else:
            raise ValueError("sigmoid attention needs normaliser_args.bias or a site with seq_len")

    def chunked_rule(self) -> PointwiseRule:
        """σ(s + b) in tiles of scores."""
        return PointwiseRule("sigmoid", bias=self.bias)

    def forward(self, scores: Tensor, mask: Tensor | None) -> Tensor:
        w = (scores.to(compute_dtype(scores)) + self.bias).sigmoid()
        return masked_fill_zero(w, mask)

    def extra_repr(self) -> str:
        return f"bias={self.bias:.4f}"
