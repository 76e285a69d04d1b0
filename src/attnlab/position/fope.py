"""FoPE — Fourier Position Embedding (Hua, Jiang, Lv, Zhang, Sun, Fan, Zhu, Qi, Ding, Zhou, "Fourier Position
Embedding: Enhancing Attention's Periodic Extension for Length Generalization", ICML 2025, arXiv:2412.17739).

Each rotary pair carries a Fourier series of frequencies instead of one, and frequencies too low to complete
one period in the training window are clipped to zero. As implemented in the authors' OLMo code
(``olmo/model.py``: ``RotaryEmbedding.get_inv_freq``, ``FourierEmbedding``; read in the fork
``yiju-zhao/Fourier-Position-Embedding``, the only public copy found), with the 60M config's defaults:

    w_j = b^{−2j/d}, j < d/2;   w_j := 0 where w_j < 2π/L · ratio          (clip floor; L = training length)
    keep the D_in non-zero w (the highest frequencies);  D_out = min(D_in, d // 4)
    per head h, fixed (not trained):  S_h, C_h = xavier_normal(gain σ) + E   ∈ R^{D_in × D_out}
        E = identity, or the "step eye" picking every ⌈D_in/D_out⌉-th frequency when D_in ≠ D_out
    sin_h(t) = sin(t·w) S_h,  cos_h(t) = cos(t·w) C_h                            [T, D_out]
    pad both to d/2 with zero frequency (cos = 1, sin = 0: position-free pairs), then per pair j
    (half-split layout, rotate_half):  (a, b) → (a·cos − b·sin, a·sin + b·cos)    for q and k alike

Zero-frequency padding: the code's comment on that line says "pad with zeros" (补零), i.e. frequency 0,
but the released line pads *both* sin and cos with the value 1, so a padded pair becomes (a − b, a + b) and its
share of q·k is doubled. attnlab pads with zero frequency by default (``sin_pad=0``: the padded pairs are
left alone, as the comment and the paper's "zero-frequency" wording say); ``sin_pad=1`` reproduces the
released line exactly. With σ = 0, ``n_out`` equal to the number of kept frequencies and the default padding,
FoPE is exactly floor-clipped RoPE. sin and cos get *different* random mixes, so scores are only approximately
a function of m − n when σ > 0. The xavier gain follows torch's fan computation on the 3-D coefficient tensor
[H, D_in, D_out], as in the code.

Verified in code: steps above, pad value 1 in the released line, D_out cap d//4, per-head separate sin/cos
coefficients, σ = 0.3
for the 60M config (0.4 / 0.6 for 180M / 1.2B per config names). Unverified: the paper's own notation; how the
authors pair coefficients with GQA key heads (here query head h and its key head share the key head's set).
Half-split pairing only. Positions are absolute and each token's rotation depends only on its own position, so
KV-cache decoding is exact.
"""

from __future__ import annotations

import math

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from attnlab.position._training_length import training_length
from attnlab.position.base import POSITIONS, PositionEncoding
from attnlab.position.rope import rope_inv_freq
from attnlab.types import compute_dtype


class FoPEParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    sigma: float = Field(0.3, ge=0)  # xavier-normal gain of the random mixing (fourier_init_norm_gain)
    base: float = Field(10000.0, gt=1)
    floor_ratio: float = Field(1.0, ge=0)  # clip frequencies below 2π/L · floor_ratio to zero
    n_out: int | None = Field(None, gt=0)  # mixed pairs D_out; None: min(D_in, d // 4) as in the code
    learnable: bool = False  # the authors keep the coefficients fixed
    train_length: int | None = Field(None, gt=0)  # L; None: the site's seq_len
    sin_pad: float = 0.0  # sin of the padded pairs: 0 = zero frequency; 1 = the released code's value

    def check_site(self, site: object, field: str) -> None:
        training_length(self.train_length, site, f"{field}.train_length")


def floor_clipped_inv_freq(dim: int, base: float, train_length: int, floor_ratio: float = 1.0) -> Tensor:
    """RoPE frequencies with those below 2π/L · ratio set to 0 (less than one period in the window), float64."""
    w = rope_inv_freq(dim, base)
    return torch.where(w < 2 * math.pi / train_length * floor_ratio, torch.zeros_like(w), w)


def step_eye(n_heads: int, d_in: int, d_out: int) -> Tensor:
    """[H, D_in, D_out] with a 1 at (i·⌈D_in/D_out⌉, i): output pair i starts as input frequency i·step."""
    eye = torch.zeros(n_heads, d_in, d_out, dtype=torch.float64)
    step = math.ceil(d_in / d_out)
    for i in range(d_out):
        if i * step < d_in:
            eye[:, i * step, i] = 1.0
    return eye


def fourier_coefficients(n_heads: int, d_in: int, d_out: int, sigma: float) -> Tensor:
    """xavier_normal(gain σ) + step eye, [H, D_in, D_out] float64 (torch's fans for a 3-D tensor, as the code)."""
    noise = torch.empty(n_heads, d_in, d_out, dtype=torch.float64)
    if sigma > 0:
        nn.init.xavier_normal_(noise, gain=sigma)
    else:
        noise.zero_()
    return noise + step_eye(n_heads, d_in, d_out)


@POSITIONS.register(
    "fope",
    summary="RoPE whose pairs carry fixed random Fourier mixes of the non-clipped frequencies (FoPE)",
    paper="Hua et al. 2025 (ICML), arXiv:2412.17739",
    params=FoPEParams,
    cross=False,
)
class FoPE(PositionEncoding):
    def __init__(self, params: FoPEParams | None = None, site: object | None = None):
        super().__init__()
        params = params or FoPEParams()
        self.sin_pad = params.sin_pad
        self.d_head, n_heads = int(site.d_head), int(site.n_heads)  # type: ignore[union-attr]
        if self.d_head % 2:
            raise ValueError(f"fope needs an even head dimension; got d_head={self.d_head}")
        length = training_length(params.train_length, site, "position_args.train_length")
        w = floor_clipped_inv_freq(self.d_head, params.base, length, params.floor_ratio)
        self.register_buffer("freqs", w[w != 0], persistent=False)  # [D_in], the highest frequencies
        d_in = self.freqs.numel()
        d_out = min(d_in, params.n_out if params.n_out is not None else self.d_head // 4)
        if d_in == 0 or d_out == 0:  # every frequency clipped, or d < 4: no position left
            self.sin_coef = self.cos_coef = None
            return
        sin_coef = fourier_coefficients(n_heads, d_in, d_out, params.sigma).float()
        cos_coef = fourier_coefficients(n_heads, d_in, d_out, params.sigma).float()
        if params.learnable:
            self.sin_coef, self.cos_coef = nn.Parameter(sin_coef), nn.Parameter(cos_coef)
        else:
            self.register_buffer("sin_coef", sin_coef)
            self.register_buffer("cos_coef", cos_coef)

    def cos_sin(self, positions: Tensor, n_rep: int, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """Per-head cos and sin, [H', T, d/2] each ([B, H', T, d/2] for per-row positions [B, T]); pairs beyond
        D_out get cos = 1, sin = ``sin_pad``."""
        half = self.d_head // 2
        if self.sin_coef is None:
            ones = torch.ones(*positions.shape[:-1], 1, positions.shape[-1], half, dtype=dtype, device=positions.device)
            return ones, ones * self.sin_pad
        angles = positions.to(torch.float64)[..., None] * self.freqs.to(torch.float64)  # [(B,) T, D_in]
        sin_t, cos_t = angles.sin().to(dtype), angles.cos().to(dtype)
        sin_coef, cos_coef = self.sin_coef.to(dtype), self.cos_coef.to(dtype)
        if n_rep > 1:  # GQA: a key head and its query heads share the key head's (first query head's) set
            sin_coef = sin_coef[::n_rep].repeat_interleave(n_rep, 0)
            cos_coef = cos_coef[::n_rep].repeat_interleave(n_rep, 0)
        spec = "tD,hDd->htd" if positions.dim() == 1 else "btD,hDd->bhtd"
        sin = torch.einsum(spec, sin_t, sin_coef)  # [(B,) H, T, D_out]
        cos = torch.einsum(spec, cos_t, cos_coef)
        pad = (0, half - sin.shape[-1])
        return nn.functional.pad(cos, pad, value=1.0), nn.functional.pad(sin, pad, value=self.sin_pad)

    def rotate(self, q: Tensor, k: Tensor, positions: Tensor) -> tuple[Tensor, Tensor]:
        n_rep = q.shape[1] // k.shape[1]
        cos, sin = self.cos_sin(positions, n_rep, compute_dtype(q))
        return apply_pairs(q, cos, sin), apply_pairs(k, cos[..., ::n_rep, :, :], sin[..., ::n_rep, :, :])


def apply_pairs(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x [B, H, T, d], cos / sin [H or 1, T, d/2]: pair (x_j, x_{j+d/2}) → (a cos − b sin, a sin + b cos)."""
    dtype = cos.dtype
    half = x.shape[-1] // 2
    a, b = x[..., :half].to(dtype), x[..., half:].to(dtype)
    return torch.cat((a * cos - b * sin, a * sin + b * cos), dim=-1).to(x.dtype)
