"""Position Interpolation, PI (Chen, Wong, Chen, Tian, "Extending Context Window of Large Language Models via
Positional Interpolation", 2023, arXiv:2306.15595).

    φ(m, i) = (m / s) · θ_i,   θ_i = b^{−2i/d},   s = L′ / L

RoPE evaluated at the interpolated position m / s, so a model trained at length L sees positions in [0, L) when
it reads L′ = s · L tokens. Implemented as θ_i / s (Hugging Face ``rope_type="linear"``), which is the same
angle. The paper then fine-tunes ~1000 steps at L′; without fine-tuning the highest frequencies are compressed
too and local resolution suffers.

Source: the paper's formula above (arXiv:2306.15595, §2.3) and Hugging Face transformers
``src/transformers/modeling_rope_utils.py`` ``_compute_linear_scaling_rope_parameters`` (``inv_freq /=
factor``, read in the code). Scores
depend on m − n only; the cache holds keys rotated at their own position, so KV-cache decoding is exact.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from attnlab.position.base import POSITIONS
from attnlab.position.rope import RoPE, rope_inv_freq


class PIParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    scale: float = Field(4.0, ge=1)  # s = target length / training length
    base: float = Field(10000.0, gt=1)
    interleaved: bool = False


@POSITIONS.register(
    "rope_pi",
    summary="RoPE at interpolated positions m/s (Position Interpolation)",
    paper="Chen et al. 2023, arXiv:2306.15595",
    params=PIParams,
    cross=False,
)
class PositionInterpolation(RoPE):
    def __init__(self, params: PIParams | None = None, site: object | None = None):
        params = params or PIParams()
        super().__init__(params, site)  # type: ignore[arg-type]  (reads base, interleaved)
        self.scale = params.scale

    def inv_freq(self) -> Tensor:
        return rope_inv_freq(self.d_head, self.base) / self.scale
