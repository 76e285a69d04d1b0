"""NTK-aware RoPE scaling, static and dynamic (bloc97, "NTK-Aware Scaled RoPE", Reddit r/LocalLLaMA, 2023;
dynamic variant by emozilla; no arXiv paper — analysed in Peng et al., YaRN, 2023, arXiv:2309.00071, §3.1–3.3).

Static (``rope_ntk``):

    b′ = b · s^{d/(d−2)},   θ′_i = b′^{−2i/d}

The highest frequency (i = 0) is unchanged, the lowest (i = d/2 − 1) is divided by exactly s: high frequencies
extrapolate, low frequencies interpolate. Example: b = 10000, d = 128, s = 4 → b′ ≈ 40 890.

Dynamic (``rope_ntk_dynamic``, Hugging Face ``rope_type="dynamic"``), with n the current sequence length and L
the training length:

    n′ = max(n, L);   b′ = b · (α · n′ / L − (α − 1))^{d/(d−2)}

so b′ = b while n ≤ L, and the base grows with n beyond it. Note: even α = 1 changes the base once n > L
(b′ = b · (n/L)^{d/(d−2)}); only lengths within L give plain RoPE.

Positions given to ``rotate`` are absolute (they include the KV-cache offset), so here n = max(position) + 1.
HF computes the same n = max(position_ids) + 1 each forward and rotates the new q, k with it, but keys already
in the cache keep the rotation of the base they were computed with. So once n > L, decoding with a KV cache
does *not* equal a full forward pass over the same tokens (it is what HF does). attnlab declares
``kv_cache=False`` for this entry. Scores are also not invariant to shifting all positions (the base depends on
the largest one). HF is stateful — it keeps the largest base seen until a sequence shorter than L resets it —
whereas this reference is a pure function of the positions it is given (the same within one growing sequence).

Source: the formulas above (YaRN, arXiv:2309.00071, §3, which restates bloc97's and emozilla's methods) and
Hugging Face transformers ``src/transformers/modeling_rope_utils.py``: ``_compute_dynamic_ntk_parameters``
(base · (α·n/L − (α − 1))^{d/(d−2)}) and the dynamic update of the rotary embedding (``dynamic_rope_update``
there; ``_dynamic_frequency_update`` of the rotary-embedding classes in older releases: recompute when n
grows past the cached length, reset to the original frequencies when a sequence shorter than L follows),
read in the code.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from attnlab.errors import ConfigError
from attnlab.position._training_length import training_length
from attnlab.position.base import POSITIONS
from attnlab.position.rope import RoPE, apply_rotary, rope_angles, rope_inv_freq


def ntk_base(base: float, scale: float, dim: int) -> float:
    """b · s^{d/(d−2)}: the base that divides the lowest frequency by s and keeps the highest."""
    return base * scale ** (dim / (dim - 2))


def dynamic_ntk_scale(current_length: int, train_length: int, factor: float) -> float:
    """α · max(n, L) / L − (α − 1): 1 within the training length, growing linearly beyond it."""
    return factor * max(current_length, train_length) / train_length - (factor - 1)


def check_head_dim(site: object, field: str) -> None:
    d_head = getattr(site, "d_head", 0)
    if d_head <= 2 or d_head % 2:
        raise ConfigError(field, d_head, "NTK scaling needs an even head dimension d > 2 (exponent d/(d−2))")


class NTKParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    scale: float = Field(4.0, ge=1)  # s = target length / training length
    base: float = Field(10000.0, gt=1)
    interleaved: bool = False

    def check_site(self, site: object, field: str) -> None:
        check_head_dim(site, field)


class DynamicNTKParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    scale: float = Field(4.0, ge=1)  # α, HF's ``factor``
    base: float = Field(10000.0, gt=1)
    interleaved: bool = False
    train_length: int | None = Field(None, gt=0)  # L; None: the site's seq_len

    def check_site(self, site: object, field: str) -> None:
        check_head_dim(site, field)
        training_length(self.train_length, site, f"{field}.train_length")


@POSITIONS.register(
    "rope_ntk",
    summary="RoPE with the NTK-aware base b·s^(d/(d−2)) (static)",
    paper="bloc97 2023 (Reddit); see Peng et al. 2023, arXiv:2309.00071",
    params=NTKParams,
    cross=False,
)
class NTKAwareRoPE(RoPE):
    def __init__(self, params: NTKParams | None = None, site: object | None = None):
        params = params or NTKParams()
        super().__init__(params, site)  # type: ignore[arg-type]  (reads base, interleaved)
        check_head_dim(site, "position_args")
        self.base = ntk_base(params.base, params.scale, self.d_head)


@POSITIONS.register(
    "rope_ntk_dynamic",
    summary="RoPE whose NTK base grows with the current length beyond training (HF 'dynamic')",
    paper="emozilla/bloc97 2023 (Reddit); see Peng et al. 2023, arXiv:2309.00071",
    params=DynamicNTKParams,
    cross=False,
    kv_cache=False,
)
class DynamicNTKRoPE(RoPE):
    def __init__(self, params: DynamicNTKParams | None = None, site: object | None = None):
        params = params or DynamicNTKParams()
        super().__init__(params, site)  # type: ignore[arg-type]  (reads base, interleaved)
        check_head_dim(site, "position_args")
        self.factor = params.scale
        self.train_length = training_length(params.train_length, site, "position_args.train_length")

    def base_for(self, current_length: int) -> float:
        if current_length <= self.train_length:  # HF keeps the original frequencies here, bit for bit
            return self.base
        return ntk_base(self.base, dynamic_ntk_scale(current_length, self.train_length, self.factor), self.d_head)

    def rotate(self, q: Tensor, k: Tensor, positions: Tensor) -> tuple[Tensor, Tensor]:
        current_length = int(positions.max()) + 1 if positions.numel() else 0
        angles = rope_angles(positions, rope_inv_freq(self.d_head, self.base_for(current_length)))
        return apply_rotary(q, angles, self.interleaved), apply_rotary(k, angles, self.interleaved)
