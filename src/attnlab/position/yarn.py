"""YaRN (Peng, Quesnelle, Fan, Shippole, "YaRN: Efficient Context Window Extension of Large Language Models",
ICLR 2024, arXiv:2309.00071): "NTK-by-parts" frequencies plus an attention temperature.

With θ_i = b^{−2i/d}, wavelength λ_i = 2π / θ_i and r_i = L / λ_i rotations per training window:

    γ(r) = 0 if r < α;  1 if r > β;  (r − α) / (β − α) otherwise          α = 1, β = 32 (LLaMA)
    θ′_i = (1 − γ(r_i)) · θ_i / s + γ(r_i) · θ_i                            (fast dims keep θ, slow dims use θ/s)
    √(1/t) = 0.1 · ln s + 1   (1 when s ≤ 1)                                 "mscale" / HF ``attention_factor``

Both rotated q and k are multiplied by √(1/t), so the logits are scaled by 1/t = mscale², as HF does by scaling
cos and sin (apply the temperature once: not to cos/sin *and* to the logits).

This follows the HF code form (``_compute_yarn_parameters``, read in code), whose ramp runs over the pair index
rather than over r: with cd(ρ) = d · ln(L / (2πρ)) / (2 ln b),

    low = max(⌊cd(β_fast)⌋, 0),  high = min(⌈cd(β_slow)⌉, d − 1)
    ramp_i = clamp((i − low) / (high − low), 0, 1),  i = 0 … d/2 − 1
    θ′_i = θ_i / s · ramp_i + θ_i · (1 − ramp_i)

HF's ``beta_fast = 32`` is the paper's β and ``beta_slow = 1`` its α (the names are inverted). Example: d = 128,
b = 10⁴, L = 4096 → low = 20, high = 46. mscale(8) ≈ 1.208, mscale(16) ≈ 1.277. DeepSeek's ``mscale_all_dim``
variant is not implemented. L is the training length (the site's ``seq_len`` unless ``train_length`` is set).

Scores depend on m − n only (the temperature is position-free); KV-cache decoding is exact.
"""

from __future__ import annotations

import math

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from attnlab.position._training_length import training_length
from attnlab.position.base import POSITIONS
from attnlab.position.rope import RoPE, apply_rotary, rope_angles, rope_inv_freq


class YaRNParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    scale: float = Field(4.0, ge=1)  # s = target length / training length
    base: float = Field(10000.0, gt=1)
    interleaved: bool = False
    beta_fast: float = Field(32.0, gt=0)  # the paper's β
    beta_slow: float = Field(1.0, gt=0)  # the paper's α
    attention_factor: float | None = Field(None, gt=0)  # None: 0.1·ln(s) + 1
    train_length: int | None = Field(None, gt=0)  # L; None: the site's seq_len

    def check_site(self, site: object, field: str) -> None:
        training_length(self.train_length, site, f"{field}.train_length")


def yarn_mscale(scale: float) -> float:
    """√(1/t) = 0.1 · ln(s) + 1, and 1 for s ≤ 1."""
    return 1.0 if scale <= 1 else 0.1 * math.log(scale) + 1.0


def yarn_correction_range(
    dim: int, base: float, train_length: int, beta_fast: float, beta_slow: float
) -> tuple[int, int]:
    """(low, high) pair indices of the ramp: pairs below low keep θ, pairs above high use θ / s."""

    def correction_dim(rotations: float) -> float:
        return dim * math.log(train_length / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low, high = math.floor(correction_dim(beta_fast)), math.ceil(correction_dim(beta_slow))
    return max(low, 0), min(high, dim - 1)


def yarn_inv_freq(dim: int, base: float, scale: float, train_length: int, beta_fast: float, beta_slow: float) -> Tensor:
    """θ′_i, float64 [d/2]."""
    theta = rope_inv_freq(dim, base)
    low, high = yarn_correction_range(dim, base, train_length, beta_fast, beta_slow)
    span = (high - low) or 0.001  # HF: avoid a zero-width ramp
    ramp = ((torch.arange(dim // 2, dtype=torch.float64) - low) / span).clamp(0, 1)
    return theta / scale * ramp + theta * (1 - ramp)


@POSITIONS.register(
    "yarn",
    summary="RoPE with NTK-by-parts frequencies and the 0.1·ln(s)+1 attention temperature (YaRN)",
    paper="Peng et al. 2024, arXiv:2309.00071",
    params=YaRNParams,
    cross=False,
)
class YaRN(RoPE):
    def __init__(self, params: YaRNParams | None = None, site: object | None = None):
        params = params or YaRNParams()
        super().__init__(params, site)  # type: ignore[arg-type]  (reads base, interleaved)
        length = training_length(params.train_length, site, "position_args.train_length")
        self.theta = yarn_inv_freq(self.d_head, self.base, params.scale, length, params.beta_fast, params.beta_slow)
        self.mscale = params.attention_factor if params.attention_factor is not None else yarn_mscale(params.scale)

    def inv_freq(self) -> Tensor:
        return self.theta

    def rotate(self, q: Tensor, k: Tensor, positions: Tensor) -> tuple[Tensor, Tensor]:
        angles = rope_angles(positions, self.inv_freq())
        rq, rk = apply_rotary(q, angles, self.interleaved), apply_rotary(k, angles, self.interleaved)
        if self.mscale == 1.0:
            return rq, rk
        return rq * self.mscale, rk * self.mscale
