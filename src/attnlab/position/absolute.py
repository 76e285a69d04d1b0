"""Absolute position embeddings added to the token embeddings.

- learned: a trainable table P ∈ R^{T_max × D} (GPT-2; Radford et al. 2019).
- sinusoidal: P[m, 2i] = sin(m / 10000^{2i/D}), P[m, 2i+1] = cos(m / 10000^{2i/D})
  (Vaswani et al., "Attention Is All You Need", 2017, arXiv:1706.03762).
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from attnlab.position.base import POSITIONS, PositionEncoding


class LearnedParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    max_positions: int | None = Field(None, gt=0)  # None: the site's seq_len
    init_std: float = Field(0.02, gt=0)


class SinusoidalParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    base: float = Field(10000.0, gt=1)


@POSITIONS.register(
    "learned",
    summary="trainable absolute position table added to the embeddings",
    paper="Radford et al. 2019 (GPT-2)",
    params=LearnedParams,
)
class LearnedAbsolute(PositionEncoding):
    absolute: ClassVar[bool] = True

    def __init__(self, params: LearnedParams | None = None, site: object | None = None):
        super().__init__()
        params = params or LearnedParams()
        self.max_positions = params.max_positions or int(getattr(site, "seq_len", 0) or 0)
        if self.max_positions <= 0:
            raise ValueError("learned positions need position_args.max_positions or a site with seq_len")
        self.table = nn.Embedding(self.max_positions, int(site.d_model))  # type: ignore[union-attr]
        nn.init.normal_(self.table.weight, std=params.init_std)

    def embed(self, positions: Tensor) -> Tensor:
        top = int(positions.max()) if positions.numel() else 0
        if top >= self.max_positions:
            raise ValueError(
                f"position {top} is beyond the learned table (max_positions={self.max_positions}); "
                "learned absolute positions cannot extrapolate"
            )
        return self.table(positions)


def sinusoidal_table(positions: Tensor, dim: int, base: float = 10000.0) -> Tensor:
    """[T] integer positions → [T, dim] sinusoidal embeddings (float32, or float64 if asked); [B, T] → [B, T, dim]."""
    if positions.dim() == 2:
        return sinusoidal_table(positions.flatten(), dim, base).view(*positions.shape, dim)
    half = (dim + 1) // 2
    freq = torch.exp(-math.log(base) * torch.arange(half, dtype=torch.float64) * 2 / dim)
    angles = positions.to(torch.float64)[:, None] * freq.to(positions.device)[None, :]  # [T, half]
    table = torch.empty(positions.shape[0], 2 * half, dtype=torch.float64, device=positions.device)
    table[:, 0::2] = angles.sin()
    table[:, 1::2] = angles.cos()
    return table[:, :dim].to(torch.float32)


@POSITIONS.register(
    "sinusoidal",
    summary="fixed sin/cos absolute embeddings added to the embeddings",
    paper="Vaswani et al. 2017, arXiv:1706.03762",
    params=SinusoidalParams,
)
class Sinusoidal(PositionEncoding):
    absolute: ClassVar[bool] = True

    def __init__(self, params: SinusoidalParams | None = None, site: object | None = None):
        super().__init__()
        self.base = (params or SinusoidalParams()).base
        self.dim = int(site.d_model)  # type: ignore[union-attr]

    def embed(self, positions: Tensor) -> Tensor:
        return sinusoidal_table(positions, self.dim, self.base)
