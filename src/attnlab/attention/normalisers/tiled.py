"""Score normalisers computed in tiles: the ``chunked`` backend's PyTorch form and the compiled CPU kernels.

A normaliser deriving from ``TiledNormaliser`` names its tile algebra (``chunked_rule``: a ``Rule`` of
``attnlab.attention.fast``); ``attend_chunked`` runs it, in the PyTorch tiles (``native=False``) or the compiled
kernels (``native=True``), as the layer's dispatch table (``attnlab.attention.dispatch``) chose; a direct call
without ``native`` takes the kernels where they cover the call (``attnlab.attention.fast.native.covers``).

``raw_qk``: the q, k *before* ``prepare``, handed over explicitly by the layer. A normaliser whose kernel prepares
them itself (LSSA's cosine scores: the kernel l2-normalises q, k tile by tile, so no normalised [B, H, T, D] copy is
kept for the backward pass) attends those instead of the prepared pair (``chunked_inputs``).
"""

from __future__ import annotations

from torch import Tensor

from attnlab.attention.core import AttnOutput
from attnlab.attention.fast.chunked import attend_chunked_rule
from attnlab.attention.fast.tiling import Rule
from attnlab.attention.normalisers.base import NormaliserBase
from attnlab.types import PositionBias, ScoreMod


class TiledNormaliser(NormaliserBase):
    def chunked_rule(self) -> Rule:  # pragma: no cover - abstract
        """The tile algebra of the ``chunked`` backend."""
        raise NotImplementedError

    def normalises_in_kernel(self) -> bool:
        """Whether the tiles l2-normalise q, k themselves when given the q, k from before ``prepare`` (LSSA)."""
        return False

    def chunked_inputs(self, q: Tensor, k: Tensor, raw_qk: tuple[Tensor, Tensor] | None) -> tuple[Tensor, Tensor, bool]:
        """q, k for the tiles, and whether the kernel l2-normalises them itself: the q, k from before ``prepare``
        where this normaliser normalises in the kernel and they are given, else the prepared pair."""
        if raw_qk is not None and self.normalises_in_kernel():
            return raw_qk[0], raw_qk[1], True
        return q, k, False

    def attend_chunked(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        *,
        normaliser: object = None,
        score_mod: ScoreMod | None = None,
        bias: PositionBias | None = None,
        causal: bool = True,
        scale: float | None = None,
        window: int | None = None,
        raw_qk: tuple[Tensor, Tensor] | None = None,
        native: bool | None = None,
        mask: Tensor | None = None,
    ) -> AttnOutput:
        """This normaliser in tiles of scores: O(T·chunk) memory in forward and backward, exact. ``mask``: a
        boolean [B|1, H|1, Tq, Tk] used instead of the causal / window rule (PyTorch tiles only)."""
        q, k, qk_norm = self.chunked_inputs(q, k, raw_qk)
        return attend_chunked_rule(
            self.chunked_rule(),
            q,
            k,
            v,
            score_mod=score_mod,
            bias=bias,
            causal=causal,
            scale=scale,
            window=window,
            qk_norm=qk_norm,
            native=native,
            mask=mask,
        )
