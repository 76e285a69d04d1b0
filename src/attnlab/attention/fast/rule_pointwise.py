"""Pointwise normalisers in tiles: sigmoid σ(s + b) and ReLU(s)^p / L_i^α, no coupling between keys.

w = f(s) · r_i; backward ds = f′(s) · dw · r_i. Sigmoid: Ramapuram et al. 2024, arXiv:2409.04431; ReLU:
Wortsman et al. 2023, arXiv:2309.08586.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from attnlab.attention.fast.tiling import KeyTile, Problem, QueryBlock, Rule


class PointwiseRule(Rule):
    """w = f(s) · r_i with no coupling between keys: sigmoid σ(s + b), ReLU(s)^p / L_i^α.

    ``kind``: "sigmoid" (``bias``) or "relu" (``power``); ``row_scale``: a function of the visible counts
    N_i [c, 1] giving r_i (ReLU's 1 / L_i^α), or None.
    """

    def __init__(
        self,
        kind: str,
        bias: float = 0.0,
        power: float = 1.0,
        row_scale: Callable[[Tensor], Tensor] | None = None,
    ):
        if kind not in ("sigmoid", "relu"):
            raise ValueError(f"PointwiseRule kind={kind!r}: unknown (allowed: sigmoid, relu)")
        self.kind, self.bias, self.power, self.row_scale = kind, bias, power, row_scale

    @property
    def needs_counts(self) -> bool:  # type: ignore[override]
        return self.row_scale is not None

    def _scale(self, pb: Problem, blk: QueryBlock) -> Tensor | None:
        if self.row_scale is None:
            return None
        return self.row_scale(pb.counts(blk))

    def _weights(self, s: Tensor, tile: KeyTile, r: Tensor | None) -> tuple[Tensor, Tensor]:
        """(w, f′(s)·r) of a tile: the weights and their derivative, hidden entries 0."""
        if self.kind == "sigmoid":
            w = s.add_(self.bias).sigmoid_()
            deriv = w - w * w
        else:
            pos = s.relu_()
            if self.power == 1:
                w, deriv = pos, (pos > 0).to(pos.dtype)
            else:
                w = pos.pow(self.power)
                deriv = pos.pow(self.power - 1).mul_(self.power)
        if r is not None:
            w = w * r
            deriv = deriv.mul_(r)
        return tile.fill_(w, 0.0), tile.fill_(deriv, 0.0)

    def forward(self, pb: Problem) -> tuple[Tensor, tuple[Tensor, ...]]:
        out = pb.new(pb.b, pb.h, pb.t_q, pb.e)
        for blk in pb.blocks():
            r = self._scale(pb, blk)
            acc = pb.rows(out, blk)
            for tile in pb.tiles(blk):
                s = pb.scores(blk, tile)
                if self.kind == "sigmoid":
                    w = tile.fill_(s.add_(self.bias).sigmoid_(), 0.0)
                else:
                    w = s.relu_() if self.power == 1 else s.relu_().pow_(self.power)
                    w = tile.fill_(w if r is None else w.mul_(r), 0.0)
                acc += pb.times_v(w, tile)
        return out, ()

    def backward(
        self, pb: Problem, d_out: Tensor, out: Tensor, saved: tuple[Tensor, ...], d_lse: Tensor | None
    ) -> None:
        for blk in pb.blocks():
            c = blk.stop - blk.start
            r = self._scale(pb, blk)
            d_o_g = pb.grouped(pb.rows(d_out, blk).contiguous())
            dq_g = torch.zeros_like(blk.q)
            for tile in pb.tiles(blk):
                s, handle = pb.scores_for_backward(blk, tile)
                w, deriv = self._weights(s, tile, r)
                pb.add_dv(w, d_o_g, tile)
                ds = pb.d_weights(d_o_g, tile, c).mul_(deriv)
                pb.add_grads(blk, tile, ds, handle, dq_g)
            pb.finish_dq(blk, dq_g)
