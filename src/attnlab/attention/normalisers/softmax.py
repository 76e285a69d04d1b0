"""Softmax attention (Vaswani et al., "Attention Is All You Need", 2017, arXiv:1706.03762).

    w_ij = exp(s_ij) / Σ_{j' visible} exp(s_ij')        s_ij = q_i·k_j / √d

Row-stochastic. Fused backends: PyTorch SDPA (``backend="sdpa"``), which never returns weights.
"""

from __future__ import annotations

from torch import Tensor

from attnlab.attention.core import compute_dtype
from attnlab.attention.normalisers.base import NORMALISERS, NoParams, NormaliserBase


@NORMALISERS.register(
    "softmax",
    summary="softmax over visible keys",
    paper="Vaswani et al. 2017, arXiv:1706.03762",
    params=NoParams,
    row_stochastic=True,
    backends=("reference", "sdpa"),
)
class Softmax(NormaliserBase):
    def __init__(self, params: NoParams | None = None, site: object | None = None):
        super().__init__()

    def forward(self, scores: Tensor, mask: Tensor | None) -> Tensor:
        s = scores.to(compute_dtype(scores))
        if mask is not None:
            s = s.masked_fill(~mask, float("-inf"))
        return s.softmax(dim=-1)
