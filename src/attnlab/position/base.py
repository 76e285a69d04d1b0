"""The position axis: where order enters attention.

A position encoding can act in three places, each a no-op by default:

- ``embed(positions)`` → [T, D] added to the token embeddings (absolute encodings: learned, sinusoidal);
- ``rotate(q, k, positions)`` → rotated q, k (RoPE and its relatives);
- ``score_mod()`` → a FlexAttention-style ``(score, b, h, q_idx, kv_idx) -> score`` (ALiBi, T5 bias), with
  ``score_bias()`` → the same bias as a typed value (``attnlab.types.AlibiBias`` / ``RelativeBias``) for the paths that
  apply it themselves (the exact SDPA forms, the compiled kernels); None when the score_mod has no such form.

A position may also own the whole computation (``attend``, 2D-TPE); the layer's dispatch table
(``attnlab.attention.dispatch``) sends such a layer to it.

Entries whose class sets ``absolute = True`` live once at the model input; the others live in every
attention layer.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel, ConfigDict
from torch import Tensor, nn

from attnlab.registry import Registry
from attnlab.types import PositionBias, ScoreMod

POSITIONS: Registry = Registry("position")


class NoParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PositionEncoding(nn.Module):
    absolute: ClassVar[bool] = False

    def embed(self, positions: Tensor) -> Tensor | None:
        return None

    def rotate(self, q: Tensor, k: Tensor, positions: Tensor) -> tuple[Tensor, Tensor]:
        return q, k

    def score_mod(self) -> ScoreMod | None:
        return None

    def score_bias(self) -> PositionBias | None:
        """The score_mod's bias as a typed value, for paths that apply it themselves; None: no such form."""
        return None


@POSITIONS.register(
    "nope",
    summary="no position encoding; order enters only through the causal mask",
    paper="Haviv et al. 2022, arXiv:2203.16634; Kazemnejad et al. 2023, arXiv:2305.19466",
    params=NoParams,
)
class NoPE(PositionEncoding):
    """NoPE: no position information at all. Non-causal NoPE is permutation-equivariant."""

    def __init__(self, params: NoParams | None = None, site: object | None = None):
        super().__init__()
