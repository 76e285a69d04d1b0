"""Cog attention: signed softmax (Lv et al., "More Expressive Attention with Negative Weights",
2024, arXiv:2411.07176).

    w_ij = sign(s_ij) · exp(|s_ij|) / Σ_{j' visible} exp(|s_ij'|)

Weights may be negative; Σ_j |w_ij| = 1 but Σ_j w_ij ∈ [−1, 1]. The mask is applied to |s|, not to s
(masking s with −inf first would give |−inf| = +inf). Gradients reach the scores through |s| only.

Source followed: the authors' code (trestad/CogAttn, ``Cogformer/attention.py``). Their language
models use plain softmax in the first and last layers and Cog in between (``attn_type='np'``); in attnlab
that layout is ``AttentionConfig(normaliser="cog", edge_normaliser="softmax")``.

Backends: ``chunked``: online normalisation by Σ exp|s| as in FlashAttention (running max of |s|), a custom
backward from the saved logsumexp (ds = w·(sign(s)·dw − dO·o)); on CPU compiled (``attnlab.attention.fast.native``).
"""

from __future__ import annotations

from torch import Tensor

from attnlab.attention.core import compute_dtype
from attnlab.attention.fast.rule_softmax import SoftmaxRule
from attnlab.attention.normalisers.base import NORMALISERS, NoParams
from attnlab.attention.normalisers.tiled import TiledNormaliser


@NORMALISERS.register(
    "cog",
    summary="signed softmax: sign(s) · softmax(|s|)",
    paper="Lv et al. 2024, arXiv:2411.07176",
    params=NoParams,
    signed=True,
    backends=("reference", "chunked"),
)
class Cog(TiledNormaliser):
    def __init__(self, params: NoParams | None = None, site: object | None = None):
        super().__init__()

    def chunked_rule(self) -> SoftmaxRule:
        """Signed softmax in tiles with an online row normaliser."""
        return SoftmaxRule(signed=True)

    def forward(self, scores: Tensor, mask: Tensor | None) -> Tensor:
        s = scores.to(compute_dtype(scores))
        magnitude = s.abs()
        if mask is not None:
            magnitude = magnitude.masked_fill(~mask, float("-inf"))
        return s.sign() * magnitude.softmax(dim=-1)
