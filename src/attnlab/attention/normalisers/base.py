"""The normaliser axis: scores → weights.

A normaliser is an ``nn.Module`` called as ``normaliser(scores, mask)`` with ``scores`` of shape
[B, H, Tq, Tk] (already scaled and position-modified) and ``mask`` boolean, True where a key is visible,
or None for full attention. Masked keys must get exactly zero weight.

``prepare(q, k, scale)`` lets a normaliser change how scores are formed (LSSA uses cosine scores with
no 1/√d); it is the identity by default.

A score normaliser with the ``chunked`` backend derives from ``TiledNormaliser``
(``attnlab.attention.normalisers.tiled``), which says which tile algebra computes it; this base class knows
nothing of the fast paths (the dispatch table, ``attnlab.attention.dispatch``, chooses them).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict
from torch import Tensor, nn

from attnlab.registry import Registry


class NoParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NormaliserBase(nn.Module):
    def prepare(self, q: Tensor, k: Tensor, scale: float | None) -> tuple[Tensor, Tensor, float | None]:
        return q, k, scale

    def forward(self, scores: Tensor, mask: Tensor | None) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


NORMALISERS: Registry = Registry("normaliser")


def masked_fill_zero(weights: Tensor, mask: Tensor | None) -> Tensor:
    """Exact zeros where the mask hides a key (for normalisers that are not exp-based)."""
    return weights if mask is None else weights.masked_fill(~mask, 0.0)
