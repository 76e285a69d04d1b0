"""The normaliser axis: scores → weights.

A normaliser is an ``nn.Module`` called as ``normaliser(scores, mask)`` with ``scores`` of shape
[B, H, Tq, Tk] (already scaled and position-modified) and ``mask`` boolean, True where a key is visible,
or None for full attention. Masked keys must get exactly zero weight.

``prepare(q, k, scale)`` lets a normaliser change how scores are formed (LSSA uses cosine scores with
no 1/√d); it is the identity by default.

A normaliser with the ``chunked`` backend (``attnlab.attention.fast.chunked``) says which tile algebra computes
it (``chunked_rule``); ``NormaliserBase.attend_chunked`` runs that rule. The rule is only asked for when the
backend is chosen, which the registry allows only where the entry declares ``chunked``.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict
from torch import Tensor, nn

from attnlab.attention.core import AttnOutput, ScoreMod
from attnlab.attention.fast.chunked import Rule, attend_chunked_rule
from attnlab.registry import Registry


class NoParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NormaliserBase(nn.Module):
    def prepare(self, q: Tensor, k: Tensor, scale: float | None) -> tuple[Tensor, Tensor, float | None]:
        return q, k, scale

    def forward(self, scores: Tensor, mask: Tensor | None) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def chunked_rule(self) -> Rule:
        """The tile algebra of the ``chunked`` backend (normalisers that declare it define this)."""
        raise NotImplementedError(f"{type(self).__name__} has no chunked backend")

    def chunked_inputs(self, q: Tensor, k: Tensor) -> tuple[Tensor, Tensor, bool]:
        """q, k for the chunked kernel, and whether the kernel l2-normalises them itself (LSSA); default: as given."""
        return q, k, False

    def attend_chunked(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        *,
        normaliser: object = None,
        score_mod: ScoreMod | None = None,
        causal: bool = True,
        scale: float | None = None,
        window: int | None = None,
    ) -> AttnOutput:
        """This normaliser in tiles of scores: O(T·chunk) memory in forward and backward, exact."""
        q, k, qk_norm = self.chunked_inputs(q, k)
        return attend_chunked_rule(
            self.chunked_rule(),
            q,
            k,
            v,
            score_mod=score_mod,
            causal=causal,
            scale=scale,
            window=window,
            qk_norm=qk_norm,
        )


NORMALISERS: Registry = Registry("normaliser")


def masked_fill_zero(weights: Tensor, mask: Tensor | None) -> Tensor:
    """Exact zeros where the mask hides a key (for normalisers that are not exp-based)."""
    return weights if mask is None else weights.masked_fill(~mask, 0.0)
