"""The banded form of a learned relative bias (T5) with Tq = Tk and no window, through the CPU flash op pair.

T5 gives every offset r = j − i ≤ −W (W = 113 for 32 buckets, max_distance 128) one bucket,
so those far keys carry one constant c_h per head and are a plain causal flash call on shifted sequences
(queries W…T against keys 0…T − W; non-causal attention adds the mirror image on reversed sequences), its
log-sum-exp raised by c_h. The band −W < r < W goes through the same op with the query blocks folded into its
batch: each block of c queries against the c + W − 1 keys before it (overlapping strided views of the
padded keys, no copies), the band's bias a shared [H, c, K] mask. Parts merge through their log-sum-exps and
the flash backward op, given the merged out and the total log-sum-exp, gives each part's dq, dk, dv. The
table gradient: the band's dS = P ⊙ (dP − rowsum(dO ⊙ O)) summed per offset in one pass over the band, and
a far side's Σ dS = Σ_i w_i (dO_i·o_i − D_i) from its output and mass share w_i. Memory O(T·(c + W)).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from attnlab.attention.fast.sdpa_flash import NEG_INF
from attnlab.attention.fast.tiling import exp_shifted_
from attnlab.types import compute_dtype


def diagonal_sums(a: Tensor) -> Tensor:
    """[H, c, W] → [H, c + W − 1]: column x sums a[:, r, x − (c − 1) + r] (the diagonals j − r = x − c + 1)."""
    h, c, w = a.shape
    width = w + c - 1
    skew = F.pad(a, (c - 1, 0)).reshape(h, c * width)
    skew = F.pad(skew, (0, c)).view(h, c, width + 1)  # row r shifted left by r
    return skew[..., :width].sum(1)


BANDED = True  # Tq = Tk without a window: far keys + dense band (False: the Toeplitz mask, as for KV caches)
BAND_QUERIES = 64  # query rows per block of the banded T5 path
BAND_CALL_BLOCKS = 32  # blocks per flash call of the band (its dk, dv come as [blocks, B·H, K, D])
BAND_GROUP_ELEMENTS = 2**18  # score elements (B·H·rows·keys) per group of blocks: stays in cache


class BandPlan:
    """The banded decomposition of a learned relative bias over Tq = Tk = T (no window, no KV cache).

    Offsets r = j − i at or below −W_l all share one bucket (T5: r ≤ −113 for 32 buckets and max_distance 128),
    and so do offsets at or above W_r (non-causal only). Those *far* keys carry a constant bias c_h per head:
    their attention is a plain causal flash call on shifted sequences (left: queries W_l…T, keys 0…T − W_l;
    right: the same on reversed sequences) whose log-sum-exp is raised by c_h. The *band* −W_l < r < W_r runs
    through the same flash op with the blocks folded into its batch: block n holds c = ``BAND_QUERIES`` queries
    and the K = M·c keys from W_l − 1 before its first query (overlapping strided views of the zero-padded
    sequence, no copies), with the band's bias as a shared [H, c, K] mask. The parts are merged through their
    log-sum-exps, and the flash backward op, given the merged output and the total log-sum-exp, gives each
    part's exact share of dq, dk, dv.
    """

    def __init__(self, bucket: Callable[[Tensor], Tensor], t: int, causal: bool, scale: float, device: torch.device):
        r = torch.arange(1 - t, t)
        buckets = bucket(r).long()
        self.t, self.causal, self.scale = t, causal, scale
        self.w_left, self.bucket_left = self._far(buckets[: t - 1].flip(0), t)
        self.w_right, self.bucket_right = (1, None) if causal else self._far(buckets[t:], t)
        c = self.c = BAND_QUERIES
        self.pad_left = self.w_left - 1
        self.windows = -(-(c + self.pad_left + self.w_right - 1) // c)  # M
        self.keys = self.windows * c  # K
        self.blocks = -(-t // c)
        self.key_span = (self.blocks - 1) * c + self.keys  # padded key positions −(W_l − 1) …
        a = torch.arange(c)[:, None]
        x = torch.arange(self.keys)[None, :]
        offset = x - self.pad_left - a  # [c, K]: r of key x for query a of any block
        visible = (offset > -self.w_left) & (offset < (1 if causal else self.w_right))
        self.band_offsets = torch.arange(1 - self.w_left, 1 if causal else self.w_right)
        self.band_buckets = buckets[self.band_offsets + t - 1].to(device)
        self.offset_index = (offset.clamp(1 - self.w_left, int(self.band_offsets[-1])) + self.w_left - 1).to(device)
        self.visible = visible.to(device)
        n = torch.arange(self.blocks)[:, None, None]
        position = n * c - self.pad_left + x[None]  # [nb, 1, K] key positions
        query = n * c + a[None]  # [nb, c, 1]
        # keys outside the sequence are hidden, except a padded query's own (zero) key: its row stays finite
        in_range = (position >= 0) & ((position < t) | (position == query))  # [nb, c, K]
        # blocks where a real query could see a key outside the sequence through the band need their own mask
        # (a causal band never reaches past a real query: only the first blocks do)
        exposed = (~in_range & visible[None] & (query < t)).flatten(1).any(1)
        self.hidden = {int(n): (~in_range[n]).to(device) for n in exposed.nonzero().flatten()}

    @staticmethod
    def _far(buckets_outward: Tensor, t: int) -> tuple[int, int | None]:
        """(W, bucket) for offsets ordered outwards (|r| = 1, 2, …, T − 1): every |r| ≥ W has the outermost
        offset's bucket; (T, None) when no offset is that far."""
        if len(buckets_outward) == 0:
            return t, None
        outer = buckets_outward[-1]
        differ = (buckets_outward != outer).nonzero()
        w = int(differ[-1]) + 2 if len(differ) else 1
        return (w, int(outer)) if w < t else (t, None)

    def band_bias(self, table: Tensor, dtype: torch.dtype) -> Tensor:
        """[H, c, K]: the band's bias per (query, key) of a block, −inf off the band."""
        per_offset = table.detach().t()[:, self.band_buckets].to(dtype)  # [H, n_band]
        return per_offset[:, self.offset_index].masked_fill(~self.visible, NEG_INF)

    # --- block layouts: strided views, blocks first, B·H as the flash op's heads ---

    def pad_queries(self, x: Tensor) -> Tensor:
        """[B, H, T, ·] → [B, H, nb·c, ·] contiguous (zero rows past T)."""
        return F.pad(x, (0, 0, 0, self.blocks * self.c - self.t)).contiguous()

    def pad_keys(self, x: Tensor) -> Tensor:
        """[B, H, T, ·] → [B, H, key_span, ·] contiguous: W_l − 1 zero rows before, zeros after."""
        return F.pad(x, (0, 0, self.pad_left, self.key_span - self.pad_left - self.t)).contiguous()

    def blocks_of(self, padded: Tensor, rows: int, n0: int = 0, n1: int | None = None) -> Tensor:
        """[n1 − n0, B·H, rows, ·] view of a padded [B, H, L, ·] tensor: block n starts at row n·c (``rows``: c
        for queries, K for the overlapping key windows). Works for [B, H, L] (no last dim) too."""
        n1 = self.blocks if n1 is None else n1
        b, h, length = padded.shape[:3]
        tail = padded.shape[3:]
        inner = math.prod(tail)
        return padded.as_strided(
            (n1 - n0, b * h, rows, *tail),
            (self.c * inner, length * inner, inner, *([1] if tail else [])),
            padded.storage_offset() + n0 * self.c * inner,
        )

    def ranges(self, bias: Tensor, b: int) -> list[tuple[int, int, Tensor]]:
        """(n0, n1, mask) per flash call of the band: runs of blocks sharing the [1, B·H, c, K] mask, and each
        block with hidden keys alone with its own."""
        h = bias.shape[0]
        shared = bias[None].expand(b, h, *bias.shape[1:]).reshape(1, b * h, *bias.shape[1:])
        out: list[tuple[int, int, Tensor]] = []
        start = 0
        for n in [*sorted(self.hidden), self.blocks]:
            for n0 in range(start, n, BAND_CALL_BLOCKS):  # bounded: the backward's key-window grads are K/c × k
                out.append((n0, min(n, n0 + BAND_CALL_BLOCKS), shared))
            if n < self.blocks:
                own = bias.masked_fill(self.hidden[n], NEG_INF)
                out.append((n, n + 1, own[None].expand(b, h, *bias.shape[1:]).reshape(1, b * h, *bias.shape[1:])))
            start = n + 1
        return out

    def scores(self, qg: Tensor, kg: Tensor, bias: Tensor, n0: int, h: int) -> Tensor:
        """ŝ q·k + bias of blocks n0 … n0 + n, [n, B·H, c, K], −inf off the band and outside the sequence."""
        s = torch.matmul(qg, kg.transpose(-1, -2)).mul_(self.scale)
        n, bh = s.shape[:2]
        s.view(n, bh // h, h, self.c, self.keys).add_(bias)
        for block, hidden in self.hidden.items():
            if n0 <= block < n0 + n:
                s[block - n0].masked_fill_(hidden, NEG_INF)
        return s

    def groups(self, rows: int) -> Iterator[tuple[int, int]]:
        """Consecutive blocks whose scores hold at most ``BAND_GROUP_ELEMENTS`` elements."""
        size = max(1, BAND_GROUP_ELEMENTS // max(1, rows * self.c * self.keys))
        for n0 in range(0, self.blocks, size):
            yield n0, min(self.blocks, n0 + size)

    def far_slices(self, side: str) -> tuple[slice, slice, bool]:
        """(query rows, key rows, reversed) of the far keys on one side."""
        if side == "left":
            return slice(self.w_left, self.t), slice(0, self.t - self.w_left), False
        return slice(0, self.t - self.w_right), slice(self.w_right, self.t), True


def lse_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of the flash op's log-sum-exp for inputs of ``dtype``."""
    return torch.float64 if dtype == torch.float64 else torch.float32


class RelativeBiasBand(torch.autograd.Function):
    """Learned relative bias as far keys (flash op, constant bias) plus a band (flash op, the bias as a mask);
    see ``BandPlan``. The table's gradient: per band offset Σ dS from one dense pass over the band; per far
    side Σ dS = Σ_i w_i (dO_i·o_i − Δ_i) from that side's output and weight."""

    @staticmethod
    def forward(ctx: Any, q: Tensor, k: Tensor, v: Tensor, table: Tensor, plan: BandPlan) -> Tensor:
        b, h, t, _ = q.shape
        wide, c, nb = compute_dtype(q), plan.c, plan.blocks
        bias = plan.band_bias(table, q.dtype)  # [H, c, K]
        qp, kp, vp = plan.pad_queries(q), plan.pad_keys(k), plan.pad_keys(v)
        band_out = q.new_empty(b, h, nb * c, v.shape[-1])
        band_lse = q.new_empty(b, h, nb * c, dtype=lse_dtype(q.dtype))
        for n0, n1, mask in plan.ranges(bias, b):
            o, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
                plan.blocks_of(qp, c, n0, n1),
                plan.blocks_of(kp, plan.keys, n0, n1),
                plan.blocks_of(vp, plan.keys, n0, n1),
                0.0,
                False,
                attn_mask=mask,
                scale=plan.scale,
            )
            plan.blocks_of(band_out, c, n0, n1).copy_(o)
            plan.blocks_of(band_lse, c, n0, n1).copy_(lse)
        parts = [(band_out[:, :, :t], band_lse[:, :, :t].to(wide), slice(0, t))]
        far: list[tuple[str, Tensor, Tensor]] = []
        for side, bucket in (("left", plan.bucket_left), ("right", plan.bucket_right)):
            if bucket is None:
                continue
            rows, keys, flip = plan.far_slices(side)
            qs, ks, vs = (x.flip(2) if flip else x for x in (q[:, :, rows], k[:, :, keys], v[:, :, keys]))
            o, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(qs, ks, vs, 0.0, True, scale=plan.scale)
            if flip:
                o, lse = o.flip(2), lse.flip(2)
            lse = lse.to(wide) + table.detach()[bucket].to(wide)[None, :, None]  # the far keys' constant bias
            parts.append((o, lse, rows))
            far.append((side, o, lse))
        total = parts[0][1].clone()
        for _, lse, rows in parts[1:]:
            total[:, :, rows] = torch.logaddexp(total[:, :, rows], lse)
        out = parts[0][0].to(wide) * torch.exp(parts[0][1] - total)[..., None]
        for o, lse, rows in parts[1:]:
            out[:, :, rows] += o.to(wide) * torch.exp(lse - total[:, :, rows])[..., None]
        out = out.to(q.dtype)
        ctx.plan, ctx.sides = plan, [side for side, _, _ in far]
        ctx.save_for_backward(qp, kp, vp, table, out, total, *[x for _, o, lse in far for x in (o, lse)])
        return out

    @staticmethod
    def backward(ctx: Any, d_out: Tensor) -> tuple[Tensor | None, ...]:
        plan: BandPlan = ctx.plan
        qp, kp, vp, table, out, total, *far = ctx.saved_tensors
        t = plan.t
        q, k, v = qp[:, :, :t], kp[:, :, plan.pad_left : plan.pad_left + t], vp[:, :, plan.pad_left : plan.pad_left + t]
        b, h = q.shape[:2]
        wide, c, nb = total.dtype, plan.c, plan.blocks
        d_out = d_out.to(q.dtype)
        g = d_out.to(wide)
        row_dot = (g * out.to(wide)).sum(-1)  # Δ_i = rowsum(dO ⊙ O), [B, H, T]
        d_table = torch.zeros(table.shape[1], table.shape[0], dtype=wide, device=q.device)  # [H, buckets]
        # the band: the flash backward op per range of blocks; dk, dv overlap-added from the key windows
        bias = plan.band_bias(table, q.dtype)
        gp, op_ = plan.pad_queries(d_out), plan.pad_queries(out)
        lse_p = F.pad(total.to(lse_dtype(q.dtype)), (0, nb * c - t)).contiguous()
        dq = torch.empty(b, h, nb * c, q.shape[-1], dtype=q.dtype, device=q.device)
        dk = torch.zeros(b, h, plan.key_span, k.shape[-1], dtype=wide, device=q.device)
        dv = torch.zeros(b, h, plan.key_span, v.shape[-1], dtype=wide, device=q.device)
        for n0, n1, mask in plan.ranges(bias, b):
            gq, gk, gv = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
                plan.blocks_of(gp, c, n0, n1),
                plan.blocks_of(qp, c, n0, n1),
                plan.blocks_of(kp, plan.keys, n0, n1),
                plan.blocks_of(vp, plan.keys, n0, n1),
                plan.blocks_of(op_, c, n0, n1),
                plan.blocks_of(lse_p, c, n0, n1),
                0.0,
                False,
                attn_mask=mask,
                scale=plan.scale,
            )
            plan.blocks_of(dq, c, n0, n1).copy_(gq)
            for m in range(plan.windows):  # key rows m·c … m·c + c of block n's window are key block n + m
                plan.blocks_of(dk, c, n0 + m, n1 + m).add_(gk[:, :, m * c : (m + 1) * c])
                plan.blocks_of(dv, c, n0 + m, n1 + m).add_(gv[:, :, m * c : (m + 1) * c])
        dq = dq[:, :, :t].to(wide)
        dk = dk[:, :, plan.pad_left : plan.pad_left + t]
        dv = dv[:, :, plan.pad_left : plan.pad_left + t]
        if ctx.needs_input_grad[3]:  # Σ dS per band offset, in one dense pass over the band
            bias_w = bias.to(wide)
            dot_p = F.pad(row_dot, (0, nb * c - t)).contiguous()
            ds_sum = torch.zeros(h, c, plan.keys, dtype=wide, device=q.device)
            for n0, n1 in plan.groups(b * h):
                qg, gg = plan.blocks_of(qp, c, n0, n1).to(wide), plan.blocks_of(gp, c, n0, n1).to(wide)
                kg, vg = plan.blocks_of(kp, plan.keys, n0, n1).to(wide), plan.blocks_of(vp, plan.keys, n0, n1).to(wide)
                s = plan.scores(qg, kg, bias_w, n0, h).sub_(plan.blocks_of(lse_p, c, n0, n1)[..., None])
                p = exp_shifted_(s)  # P
                ds = torch.matmul(gg, vg.transpose(-1, -2)).sub_(plan.blocks_of(dot_p, c, n0, n1)[..., None]).mul_(p)
                ds_sum += ds.view(n1 - n0, b, h, c, plan.keys).sum((0, 1))
            sums = diagonal_sums(ds_sum)  # column x ↔ offset x − (c − 1) − (W_l − 1)
            first = int(plan.band_offsets[0]) + (c - 1) + plan.pad_left
            d_table.index_add_(1, plan.band_buckets, sums[:, first : first + len(plan.band_offsets)])
        # far keys: the flash backward op with the total log-sum-exp (less the constant bias) and the merged out
        for side, o, lse in zip(ctx.sides, far[0::2], far[1::2], strict=True):
            rows, keys, flip = plan.far_slices(side)
            bucket = plan.bucket_left if side == "left" else plan.bucket_right
            const = table.detach()[bucket].to(wide)[None, :, None]
            lse_rows = (total[:, :, rows] - const).to(lse_dtype(q.dtype))
            pieces = (d_out[:, :, rows], q[:, :, rows], k[:, :, keys], v[:, :, keys], out[:, :, rows], lse_rows)
            gq, gk, gv = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
                *(x.flip(2) if flip else x for x in pieces), 0.0, True, scale=plan.scale
            )
            if flip:
                gq, gk, gv = gq.flip(2), gk.flip(2), gv.flip(2)
            dq[:, :, rows] += gq
            dk[:, :, keys] += gk
            dv[:, :, keys] += gv
            if ctx.needs_input_grad[3]:  # Σ dS over these keys = Σ_i w_i (dO_i·o_i − Δ_i), w_i their mass share
                w = torch.exp(lse - total[:, :, rows])
                share = w * ((g[:, :, rows] * o.to(wide)).sum(-1) - row_dot[:, :, rows])
                d_table[:, bucket] += share.sum((0, 2))
        d_grad = d_table.t().to(table.dtype) if ctx.needs_input_grad[3] else None
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), d_grad, None
