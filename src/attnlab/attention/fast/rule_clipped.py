"""Clipped softmax in tiles (Bondarenko et al. 2023, arXiv:2306.12929): w = clip((ζ−γ)p + γ, 0, 1).

A pass for the softmax normaliser (logsumexp), then the clipped weights; the backward needs E_i = Σ_j p_ij dp_ij
first (one extra pass; none when a block is one tile).
"""

from __future__ import annotations

import torch
from torch import Tensor

from attnlab.attention.fast.tiling import (
    NEG_INF,
    KeyTile,
    Problem,
    QueryBlock,
    Rows,
    Rule,
    exp_shifted_,
    safe_max,
    softmax_floored,
)


class ClippedSoftmaxRule(Rule):
    """w = clip((ζ − γ)·softmax(s) + γ, 0, 1) (Bondarenko et al. 2023, arXiv:2306.12929)."""

    def __init__(self, gamma: float, zeta: float):
        self.gamma, self.zeta = gamma, zeta

    def _row_lse(self, pb: Problem, blk: QueryBlock) -> Tensor:
        """The block rows' logsumexp over visible keys, [B, H, c, 1] (the first pass: online max and sum)."""
        c = blk.stop - blk.start
        m, l_sum = pb.new(pb.b, pb.h, c, fill=NEG_INF), pb.new(pb.b, pb.h, c)
        for tile in pb.tiles(blk):
            s = tile.fill_(pb.scores(blk, tile), NEG_INF)
            m_new = torch.maximum(m, s.amax(-1))
            m_safe = safe_max(m_new)
            l_sum.mul_((m - m_safe).exp_()).add_(exp_shifted_(s.sub_(m_safe[..., None])).sum(-1))
            m = m_new
        return (m + l_sum.log())[..., None]

    def _weights(self, s: Tensor, lse: Tensor, tile: KeyTile) -> tuple[Tensor, Tensor, Tensor]:
        """(p, y, w): softmax from the row logsumexp, the stretched (ζ−γ)p + γ and the clipped weights."""
        return self._clip(exp_shifted_(tile.fill_(s, NEG_INF).sub_(lse)))

    def _clip(self, p: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(p, y, w) from softmax p: y = (ζ−γ)p + γ, w = clip(y, 0, 1). Hidden keys have p = 0, so y = γ ≤ 0 and
        w = 0 without a mask."""
        y = torch.mul(p, self.zeta - self.gamma).add_(self.gamma)
        return p, y, y.clamp(0.0, 1.0)

    def _forward_weights(self, p: Tensor) -> Tensor:
        """w = clip((ζ−γ)p + γ, 0, 1) in one new tensor (the forward needs no y)."""
        return torch.mul(p, self.zeta - self.gamma).add_(self.gamma).clamp_(0.0, 1.0)

    def forward(self, pb: Problem) -> tuple[Tensor, tuple[Tensor, ...]]:
        out = pb.new(pb.b, pb.h, pb.t_q, pb.e)
        lses = pb.new(pb.b, pb.h, pb.t_q)
        for blk in pb.blocks():
            tiles = list(pb.tiles(blk))
            if len(tiles) == 1:  # the whole row at once: PyTorch's fused softmax, no logsumexp pass
                w = self._forward_weights(softmax_floored(tiles[0].fill_(pb.scores(blk, tiles[0]), NEG_INF)))
                pb.rows(out, blk).copy_(pb.times_v(w, tiles[0]))
                continue
            lse = self._row_lse(pb, blk)
            acc = pb.rows(out, blk)
            for tile in tiles:
                _, _, w = self._weights(pb.scores(blk, tile), lse, tile)
                acc += pb.times_v(w, tile)
            pb.rows(lses, blk).copy_(lse[..., 0])
        return out, (lses,)

    def _d_softmax(self, pb: Problem, s: Tensor, tile: KeyTile, rows: Rows, first: bool) -> tuple[Tensor, Tensor]:
        """(p, dp) on one tile: dp = (ζ−γ)·dw where the clip passes the gradient (inclusive bounds).

        ``rows.stats`` holds the row logsumexp, or nothing when the tile holds whole rows (softmax directly).
        """
        if rows.stats:
            p, y, w = self._weights(s, rows.stats[0], tile)
        else:
            p, y, w = self._clip(softmax_floored(tile.fill_(s, NEG_INF)))
        if first:
            pb.add_dv(w, rows.d_out, tile)
        passes = w == y  # 0 ≤ y ≤ 1 in one comparison
        # (ζ−γ) on dO's rows; no mask: a hidden key's dp only ever meets its p = 0 (in ds = p (dp − Σ p dp))
        return p, pb.d_weights(rows.d_out * (self.zeta - self.gamma), tile, rows.n_rows).mul_(passes)

    def backward(
        self, pb: Problem, d_out: Tensor, out: Tensor, saved: tuple[Tensor, ...], d_lse: Tensor | None
    ) -> None:
        (lses,) = saved
        for blk in pb.blocks():
            d_o = pb.rows(d_out, blk)
            tiles = list(pb.tiles(blk))
            if len(tiles) == 1:  # whole rows: ds = p (dp − Σ_j p dp) is PyTorch's fused softmax backward
                rows = Rows(blk.stop - blk.start, pb.grouped(d_o.contiguous()), None, ())
                dq_g = torch.zeros_like(blk.q)
                s, handle = pb.scores_for_backward(blk, tiles[0])
                p, dp = self._d_softmax(pb, s, tiles[0], rows, first=True)
                pb.add_grads(blk, tiles[0], torch._softmax_backward_data(dp, p, -1, p.dtype), handle, dq_g)
                pb.finish_dq(blk, dq_g)
                continue
            rows = Rows(blk.stop - blk.start, pb.grouped(d_o.contiguous()), None, (pb.rows(lses, blk)[..., None],))
            e_sum = pb.new(pb.b, pb.h, rows.n_rows, 1)  # E_i = Σ_j p_ij dp_ij
            for tile in tiles:
                p, dp = self._d_softmax(pb, pb.scores(blk, tile), tile, rows, first=True)
                e_sum += (p * dp).sum(-1, keepdim=True)
            dq_g = torch.zeros_like(blk.q)
            for tile in tiles:
                s, handle = pb.scores_for_backward(blk, tile)
                p, dp = self._d_softmax(pb, s, tile, rows, first=False)
                pb.add_grads(blk, tile, dp.sub_(e_sum).mul_(p), handle, dq_g)
            pb.finish_dq(blk, dq_g)
