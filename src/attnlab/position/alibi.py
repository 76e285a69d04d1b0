"""ALiBi: attention with linear biases (Press, Smith, Lewis, "Train Short, Test Long", ICLR 2022,
arXiv:2108.12409).

    s_ij ← s_ij − m_h · (i − j)        m_h = 2^{−8h/H}, h = 1 … H

For H not a power of two: n = 2^⌊log₂ H⌋, slopes(n) followed by every other slope of slopes(2n), up to H
(the authors' fairseq code). Non-causal attention uses the symmetric bias −m_h · |i − j|.

``score_bias()`` hands the same bias over as data (``attnlab.types.AlibiBias``: the slopes and whether it is symmetric),
from which ``attnlab.attention.fast.sdpa`` applies it inside PyTorch's fused SDPA kernel and
``attnlab.attention.fast.native`` inside the compiled CPU kernels.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from attnlab.position.base import POSITIONS, NoParams, PositionEncoding
from attnlab.types import AlibiBias, ScoreMod


def alibi_slopes(n_heads: int) -> Tensor:
    """The per-head slopes m_h as a float64 tensor [H]."""

    def power_of_two(n: int) -> list[float]:
        return [2.0 ** (-8.0 * (h + 1) / n) for h in range(n)]

    n = 2 ** math.floor(math.log2(n_heads))
    slopes = power_of_two(n)
    if n < n_heads:
        slopes += power_of_two(2 * n)[0::2][: n_heads - n]
    return torch.tensor(slopes, dtype=torch.float64)


@POSITIONS.register(
    "alibi",
    summary="per-head linear distance penalty on the scores",
    paper="Press et al. 2022, arXiv:2108.12409",
    params=NoParams,
    cross=False,
    needs_score_mod=True,
)
class ALiBi(PositionEncoding):
    def __init__(self, params: NoParams | None = None, site: object | None = None):
        super().__init__()
        self.causal = bool(getattr(site, "causal", True))
        self.register_buffer("slopes", alibi_slopes(int(site.n_heads)).float(), persistent=False)  # type: ignore[union-attr]

    def score_mod(self) -> ScoreMod:
        slopes, causal = self.slopes, self.causal

        def alibi(score: Tensor, b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
            distance = q_idx - kv_idx
            if not causal:
                distance = distance.abs()
            return score - slopes.to(score.dtype)[h] * distance.to(score.dtype)

        return alibi

    def score_bias(self) -> AlibiBias:
        return AlibiBias(self.slopes, not self.causal)
