"""Rotary position embedding, RoPE (Su et al., "RoFormer", 2021, arXiv:2104.09864).

    θ_i = b^{−2i/d},  i = 0 … d/2 − 1;   φ(m, i) = m · θ_i
    each pair (x_a, x_b) of q and k (never v) at position m → (x_a cos φ − x_b sin φ, x_a sin φ + x_b cos φ)

so that ⟨R_m q, R_n k⟩ depends on m − n only. Pairs are (x_i, x_{i+d/2}) by default ("half", GPT-NeoX and
Hugging Face Llama) or (x_{2i}, x_{2i+1}) with ``interleaved=True`` (RoFormer, Meta Llama, GGUF files).
Angles are computed in float64 and applied in the input's compute precision (bf16 angles alias positions).
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from attnlab.position.base import POSITIONS, PositionEncoding
from attnlab.types import compute_dtype


class RoPEParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    base: float = Field(10000.0, gt=1)
    interleaved: bool = False


def rope_inv_freq(dim: int, base: float) -> Tensor:
    """θ_i = base^(−2i/dim) for i < dim/2, float64."""
    return base ** (-torch.arange(0, dim, 2, dtype=torch.float64) / dim)


def rope_angles(positions: Tensor, inv_freq: Tensor) -> Tensor:
    """[T] (or per-row [B, T]) positions, [d/2] frequencies → [T, d/2] (or [B, T, d/2]) angles in float64."""
    return positions.to(torch.float64)[..., None] * inv_freq.to(positions.device)


def apply_rotary(x: Tensor, angles: Tensor, interleaved: bool = False) -> Tensor:
    """Rotate the last dim of x [..., T, d] by angles [T, d/2] (or [B, T, d/2] for x [B, H, T, d]: each batch
    row at its own positions); returns x's dtype."""
    if angles.dim() == 3:
        angles = angles[:, None]
    dtype = compute_dtype(x)
    cos, sin = angles.cos().to(dtype), angles.sin().to(dtype)
    xc = x.to(dtype)
    if interleaved:
        a, b = xc[..., 0::2], xc[..., 1::2]
        out = torch.stack((a * cos - b * sin, a * sin + b * cos), dim=-1).flatten(-2)
    else:
        half = x.shape[-1] // 2
        a, b = xc[..., :half], xc[..., half:]
        out = torch.cat((a * cos - b * sin, a * sin + b * cos), dim=-1)
    return out.to(x.dtype)


@POSITIONS.register(
    "rope",
    summary="rotary embedding of q and k; scores depend on relative position",
    paper="Su et al. 2021, arXiv:2104.09864",
    params=RoPEParams,
    cross=False,
)
class RoPE(PositionEncoding):
    def __init__(self, params: RoPEParams | None = None, site: object | None = None):
        super().__init__()
        params = params or RoPEParams()
        self.d_head = int(site.d_head)  # type: ignore[union-attr]
        if self.d_head % 2:
            raise ValueError(f"rope needs an even head dimension; got d_head={self.d_head}")
        self.base = params.base
        self.interleaved = params.interleaved

    def inv_freq(self) -> Tensor:
        return rope_inv_freq(self.d_head, self.base)

    def rotate(self, q: Tensor, k: Tensor, positions: Tensor) -> tuple[Tensor, Tensor]:
        angles = rope_angles(positions, self.inv_freq())
        return apply_rotary(q, angles, self.interleaved), apply_rotary(k, angles, self.interleaved)
