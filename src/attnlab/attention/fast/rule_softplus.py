"""LSSA and LSSAR in tiles (Gao & Spratling 2025, arXiv:2501.13428).

- ``SoftplusRule`` (LSSA): u = softplus(c_i s), w = u / (Σu + ε); ds = σ(c_i s) c_i (dw − D) / (Σu + ε).
- ``ReweightedSoftplusRule`` (LSSAR): a row-sum pass for Σu, then r = ReLU(N_i A − O_i)^p, w = r / (Σr + ε);
  the backward needs E_i = Σ_j A_ij dA_ij first (one extra pass; none when a block is one tile).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from attnlab.attention.fast.tiling import KeyTile, Problem, QueryBlock, Rows, Rule, power_of


def _length_scale(pb: Problem, blk: QueryBlock, d_head: int, on: bool) -> tuple[Tensor, Tensor]:
    """(c_i, N_i), [c, 1] each: LSSA's score multiplier log(d)·log(N_i) (or 1) and the visible counts."""
    n = pb.counts(blk)
    return (math.log(d_head) * n.log() if on else torch.ones_like(n)), n


def _softplus_and_sigmoid(s: Tensor, c: Tensor, tile: KeyTile) -> tuple[Tensor, Tensor]:
    """u = softplus(c·s) and σ(c·s) (du/ds = σ(c·s)·c), both 0 where hidden; overwrites s.

    PyTorch's softplus is the identity above 20 (slope 1); σ(x > 20) differs from 1 by < 2.1e-9.
    """
    x = s.mul_(c)
    u = tile.fill_(F.softplus(x), 0.0)
    return u, tile.fill_(x.sigmoid_(), 0.0)


class SoftplusRule(Rule):
    """LSSA: u = softplus(c_i s), A = u / (Σ_j u + ε) (Gao & Spratling 2025, arXiv:2501.13428)."""

    needs_counts = True

    def __init__(self, d_head: int, length_scale: bool, eps: float):
        self.d_head, self.length_scale, self.eps = d_head, length_scale, eps

    def forward(self, pb: Problem) -> tuple[Tensor, tuple[Tensor, ...]]:
        out = pb.new(pb.b, pb.h, pb.t_q, pb.e)
        den = pb.new(pb.b, pb.h, pb.t_q)
        for blk in pb.blocks():
            c, _ = _length_scale(pb, blk, self.d_head, self.length_scale)
            acc, u_sum = pb.rows(out, blk), pb.rows(den, blk)
            for tile in pb.tiles(blk):
                u = tile.fill_(F.softplus(pb.scores(blk, tile).mul_(c)), 0.0)
                u_sum += u.sum(-1)
                acc += pb.times_v(u, tile)
            u_sum += self.eps
            acc /= u_sum[..., None]
        return out, (den,)

    def backward(
        self, pb: Problem, d_out: Tensor, out: Tensor, saved: tuple[Tensor, ...], d_lse: Tensor | None
    ) -> None:
        (den,) = saved  # Σ_j u_ij + ε
        for blk in pb.blocks():
            n_rows = blk.stop - blk.start
            c, _ = _length_scale(pb, blk, self.d_head, self.length_scale)
            d_o = pb.rows(d_out, blk)
            dd = (d_o * pb.rows(out, blk)).sum(-1)[..., None]
            inv = 1.0 / pb.rows(den, blk)[..., None]
            c_inv = c * inv  # ds = σ(c·s) · (dw − D) · c / (Σu + ε): the row factors go on dO's rows
            d_o_inv = pb.grouped(d_o * inv)  # dv += (u / U)ᵀ dO = uᵀ (dO / U)
            d_o_c = pb.grouped(d_o * c_inv)  # dw · c / U from one matmul
            dd_c = dd * c_inv
            dq_g = torch.zeros_like(blk.q)
            for tile in pb.tiles(blk):
                s, handle = pb.scores_for_backward(blk, tile)
                u, sig = _softplus_and_sigmoid(s, c, tile)
                pb.add_dv(u, d_o_inv, tile)
                ds = pb.d_weights(d_o_c, tile, n_rows).sub_(dd_c).mul_(sig)
                pb.add_grads(blk, tile, ds, handle, dq_g)
            pb.finish_dq(blk, dq_g)


class ReweightedSoftplusRule(Rule):
    """LSSAR: A from LSSA, r = ReLU(N_i·A − O_i)^p with O_i = [N_i > free_rows], w = r / (Σ_j r + ε).

    Backward, per row (U = Σ_j u + ε, R = Σ_j r + ε, x = N·A − O, P = ReLU(x)^(p−1), zero where x ≤ 0):
    ∂L/∂r = (dw − D) / R, ∂L/∂x = p·P·(dw − D) / R, ∂L/∂A = N·∂L/∂x, and through A = u / U, u = softplus(c·s):
    ds = σ(c·s)·c/U·(∂L/∂A − E) with E = Σ_j A ∂L/∂A. With y = P·(dw − D) and S = Σ_j N·A·y (N·A = x + O
    where y ≠ 0): E = p·S / R and ds = σ(c·s) · (y − S / N) · p·c·N / (R·U), so each tile needs one row factor.
    """

    needs_counts = True

    def __init__(self, d_head: int, length_scale: bool, eps: float, power: float, free_rows: int):
        self.d_head, self.length_scale, self.eps = d_head, length_scale, eps
        self.power, self.free_rows = power, free_rows

    def _row_sums(self, pb: Problem, blk: QueryBlock, c: Tensor) -> Tensor:
        """Σ_j u_ij + ε over the block's rows, [B, H, c, 1] (the first pass)."""
        total = pb.new(pb.b, pb.h, blk.stop - blk.start)
        for tile in pb.tiles(blk):
            total += tile.fill_(F.softplus(pb.scores(blk, tile).mul_(c)), 0.0).sum(-1)
        return (total + self.eps)[..., None]

    @staticmethod
    def _excess_(u: Tensor, n_over_u_den: Tensor, offset: Tensor) -> Tensor:
        """ReLU(N·A − O) = ReLU(u·N/U − O), in place in u (hidden keys, u = 0, give 0 as O ≥ 0)."""
        return u.mul_(n_over_u_den).sub_(offset).relu_()

    def _slope(self, pos: Tensor) -> Tensor:
        """P = ReLU(x)^(p−1), 0 where x ≤ 0 (ReLU's zero derivative: pos^(p−1) would be 1 or inf there for p ≤ 1)."""
        slope = power_of(pos, self.power - 1)
        return slope.masked_fill_(pos == 0, 0.0) if self.power <= 1 else slope

    def forward(self, pb: Problem) -> tuple[Tensor, tuple[Tensor, ...]]:
        out = pb.new(pb.b, pb.h, pb.t_q, pb.e)
        u_dens, r_dens = pb.new(pb.b, pb.h, pb.t_q), pb.new(pb.b, pb.h, pb.t_q)
        for blk in pb.blocks():
            c, n = _length_scale(pb, blk, self.d_head, self.length_scale)
            offset = (n > self.free_rows).to(pb.dtype)
            tiles = list(pb.tiles(blk))
            single = None
            if len(tiles) == 1:  # the row sums come from the tile itself: one pass
                single = tiles[0].fill_(F.softplus(pb.scores(blk, tiles[0]).mul_(c)), 0.0)
                u_den = single.sum(-1, keepdim=True).add_(self.eps)
            else:
                u_den = self._row_sums(pb, blk, c)
            f = n / u_den  # N·A = u·f
            acc, r_sum = pb.rows(out, blk), pb.rows(r_dens, blk)
            for tile in tiles:
                u = single if single is not None else tile.fill_(F.softplus(pb.scores(blk, tile).mul_(c)), 0.0)
                r = power_of(self._excess_(u, f, offset), self.power)
                r_sum += r.sum(-1)
                acc += pb.times_v(r, tile)
            r_sum += self.eps
            acc /= r_sum[..., None]
            pb.rows(u_dens, blk).copy_(u_den[..., 0])
        return out, (u_dens, r_dens)

    def _tile(self, pb: Problem, s: Tensor, tile: KeyTile, rows: Rows, first: bool) -> tuple[Tensor, Tensor, Tensor]:
        """(ReLU(x), y = P·(dw − D), σ(c·s)) on one tile; ``first``: also adds the tile's dv."""
        c, offset, f, r_den = rows.stats
        u, sig = _softplus_and_sigmoid(s, c, tile)
        pos = self._excess_(u, f, offset)
        slope = self._slope(pos)
        if first:
            pb.add_dv(slope.mul(pos).div_(r_den), rows.d_out, tile)  # r / R
        y = pb.d_weights(rows.d_out, tile, rows.n_rows).sub_(rows.dd).mul_(slope)
        return pos, y, sig

    def backward(
        self, pb: Problem, d_out: Tensor, out: Tensor, saved: tuple[Tensor, ...], d_lse: Tensor | None
    ) -> None:
        u_dens, r_dens = saved
        for blk in pb.blocks():
            c, n = _length_scale(pb, blk, self.d_head, self.length_scale)
            offset = (n > self.free_rows).to(pb.dtype)
            u_den, r_den = pb.rows(u_dens, blk)[..., None], pb.rows(r_dens, blk)[..., None]
            d_o = pb.rows(d_out, blk)
            rows = Rows(
                blk.stop - blk.start,
                pb.grouped(d_o.contiguous()),
                (d_o * pb.rows(out, blk)).sum(-1)[..., None],
                (c, offset, n / u_den, r_den),
            )
            factor = (self.power * c) * n / (r_den * u_den)  # p·c·N / (R·U)
            dq_g = torch.zeros_like(blk.q)
            tiles = list(pb.tiles(blk))
            if len(tiles) == 1:  # S from the tile itself: one pass
                s, handle = pb.scores_for_backward(blk, tiles[0])
                pos, y, sig = self._tile(pb, s, tiles[0], rows, first=True)
                s_n = pos.add_(offset).mul_(y).sum(-1, keepdim=True).div_(n)  # N·A = ReLU(x) + O where y ≠ 0
                pb.add_grads(blk, tiles[0], y.sub_(s_n).mul_(sig).mul_(factor), handle, dq_g)
                pb.finish_dq(blk, dq_g)
                continue
            s_n = pb.new(pb.b, pb.h, rows.n_rows, 1)  # S = Σ_j N·A_ij y_ij
            for tile in tiles:
                pos, y, _ = self._tile(pb, pb.scores(blk, tile), tile, rows, first=True)
                s_n += pos.add_(offset).mul_(y).sum(-1, keepdim=True)
            s_n /= n
            for tile in tiles:
                s, handle = pb.scores_for_backward(blk, tile)
                _, y, sig = self._tile(pb, s, tile, rows, first=False)
                pb.add_grads(blk, tile, y.sub_(s_n).mul_(sig).mul_(factor), handle, dq_g)
            pb.finish_dq(blk, dq_g)
