"""Softmax in tiles (and Cog's signed softmax), online: FlashAttention's algorithm in PyTorch ops.

Per row i: w = sign(s)^[signed] · exp(a − m_i) / l_i with a = |s| (signed) or s, running max m and sum l (Milakov &
Gimelshein 2018, arXiv:1805.02867; Dao et al. 2022, arXiv:2205.14135); backward ds = w · (sign·dw − D + g) with g the
gradient of the logsumexp; optional soft-capping s ← c·tanh(s/c) (Gemma 2: Gemma Team 2024, arXiv:2408.00118).
"""

from __future__ import annotations

import torch
from torch import Tensor

from attnlab.attention.fast.tiling import (
    NEG_INF,
    KeyTile,
    Problem,
    QueryBlock,
    Rule,
    exp_shifted_,
    safe_max,
    softmax_floored,
)


class SoftmaxRule(Rule):
    """Softmax (``signed=False``) or Cog's signed softmax sign(s)·softmax(|s|) (``signed=True``), online.

    ``softcap`` c: scores s ← c·tanh(s / c) before the mask (Gemma 2 logit soft-capping; softmax only).
    """

    def __init__(self, signed: bool = False, softcap: float | None = None):
        self.signed, self.softcap = signed, softcap

    @property
    def lse(self) -> bool:  # type: ignore[override]
        return not self.signed

    def _logits(self, s: Tensor, tile: KeyTile) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """(a, sign, tanh): a = |s| or s (capped), masked to −inf, overwriting s."""
        t = None
        if self.softcap is not None:
            t = s.div_(self.softcap).tanh_()
            s = t * self.softcap
        sign = None
        if self.signed:
            sign = s.sign()
            s = s.abs_()
        return tile.fill_(s, NEG_INF), sign, t

    def block_lse(self, pb: Problem, blk: QueryBlock, tiles: list[KeyTile]) -> Tensor:
        """The logsumexp of the block rows' (capped) visible logits, [B, H, c]: one pass, no output."""
        if len(tiles) == 1:
            return torch.logsumexp(self._logits(pb.scores(blk, tiles[0]), tiles[0])[0], -1)
        c = blk.stop - blk.start
        m, l_sum = pb.new(pb.b, pb.h, c, fill=NEG_INF), pb.new(pb.b, pb.h, c)
        for tile in tiles:
            a, _, _ = self._logits(pb.scores(blk, tile), tile)
            m_new = torch.maximum(m, a.amax(-1))
            m_safe = safe_max(m_new)
            l_sum.mul_((m - m_safe).exp_()).add_(exp_shifted_(a.sub_(m_safe[..., None])).sum(-1))
            m = m_new
        return m + l_sum.log()

    def row_lse(self, pb: Problem) -> Tensor:
        """The logsumexp of every row's (capped) visible logits, [B, H, Tq]."""
        lse = pb.new(pb.b, pb.h, pb.t_q)
        for blk in pb.blocks():
            pb.rows(lse, blk).copy_(self.block_lse(pb, blk, list(pb.tiles(blk))))
        return lse

    def forward(self, pb: Problem) -> tuple[Tensor, tuple[Tensor, ...]]:
        out = pb.new(pb.b, pb.h, pb.t_q, pb.e)
        lse = pb.new(pb.b, pb.h, pb.t_q)
        for blk in pb.blocks():
            tiles = list(pb.tiles(blk))
            if len(tiles) == 1:  # every row's keys in one tile: PyTorch's fused softmax, no running max
                a, sign, _ = self._logits(pb.scores(blk, tiles[0]), tiles[0])
                if pb.opts.need_lse and sign is None:
                    pb.rows(lse, blk).copy_(torch.logsumexp(a, -1))
                w = softmax_floored(a)
                pb.rows(out, blk).copy_(pb.times_v(w if sign is None else w.mul_(sign), tiles[0]))
                continue
            c = blk.stop - blk.start
            m, l_sum = pb.new(pb.b, pb.h, c, fill=NEG_INF), pb.new(pb.b, pb.h, c)
            acc = pb.new(pb.b, pb.h, c, pb.e)
            for tile in tiles:
                a, sign, _ = self._logits(pb.scores(blk, tile), tile)
                m_new = torch.maximum(m, a.amax(-1))
                m_safe = safe_max(m_new)
                p = exp_shifted_(a.sub_(m_safe[..., None]))  # [B, H, c, w]
                alpha = (m - m_safe).exp_()  # rescales what was summed under the old max
                l_sum.mul_(alpha).add_(p.sum(-1))
                if sign is not None:
                    p.mul_(sign)
                acc.mul_(alpha[..., None]).add_(pb.times_v(p, tile))
                m = m_new
            pb.rows(out, blk).copy_(acc / l_sum[..., None])
            pb.rows(lse, blk).copy_(m + l_sum.log())
        return out, (lse,)

    def backward(
        self, pb: Problem, d_out: Tensor, out: Tensor, saved: tuple[Tensor | None, ...], d_lse: Tensor | None
    ) -> None:
        """``saved`` = (lse,): the rows' logsumexp, needed by rows longer than one tile; None: computed here."""
        (lse,) = saved
        for blk in pb.blocks():
            c = blk.stop - blk.start
            d_o = pb.rows(d_out, blk)
            d_o_g = pb.grouped(d_o.contiguous())
            dq_g = torch.zeros_like(blk.q)
            tiles = list(pb.tiles(blk))
            if len(tiles) == 1:  # the whole row at once: p = softmax(a), ds from PyTorch's fused softmax backward
                s, handle = pb.scores_for_backward(blk, tiles[0])
                a, sign, t = self._logits(s, tiles[0])
                p = softmax_floored(a)
                w = p if sign is None else p * sign
                pb.add_dv(w, d_o_g, tiles[0])
                dw = pb.d_weights(d_o_g, tiles[0], c)
                if sign is not None:
                    dw.mul_(sign)
                ds = torch._softmax_backward_data(dw, p, -1, p.dtype)  # p (g − Σ_j p g): Σ_j over the full row
                if d_lse is not None:
                    ds.add_(p * pb.rows(d_lse, blk)[..., None])  # ∂lse_i/∂s_ij = p_ij
                if sign is not None:
                    ds.mul_(sign)
                if t is not None:
                    ds.mul_(1 - t * t)
                pb.add_grads(blk, tiles[0], ds, handle, dq_g)
                pb.finish_dq(blk, dq_g)
                continue
            dd = (d_o * pb.rows(out, blk)).sum(-1)  # D_i = dO_i · o_i = Σ_j w_ij dw_ij
            if d_lse is not None:
                dd = dd - pb.rows(d_lse, blk)  # ∂lse_i/∂s_ij = p_ij
            row_lse = (pb.rows(lse, blk) if lse is not None else self.block_lse(pb, blk, tiles))[..., None]
            for tile in tiles:
                s, handle = pb.scores_for_backward(blk, tile)
                a, sign, t = self._logits(s, tile)
                w = exp_shifted_(a.sub_(row_lse))  # p_ij
                if sign is not None:
                    w.mul_(sign)  # w = sign · p
                pb.add_dv(w, d_o_g, tile)
                dw = pb.d_weights(d_o_g, tile, c)
                if sign is not None:
                    dw.mul_(sign)
                ds = dw.sub_(dd[..., None]).mul_(w)  # softmax: p (dw − D); Cog: w (sign·dw − D)
                if t is not None:
                    ds.mul_(1 - t * t)
                pb.add_grads(blk, tile, ds, handle, dq_g)
            pb.finish_dq(blk, dq_g)
