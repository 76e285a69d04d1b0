"""The chunked backend's problem and tiling: what every tile rule (``attnlab.attention.fast.rule_*``) works on.

``Problem`` holds one call's q, k, v (GQA groups stacked so k and v are never repeated), its query blocks and key
tiles, the scores of a tile (scaled, ``score_mod``-ified, optionally on l2-normalised q, k) and the gradient
accumulators; ``Rule`` is the interface of a normaliser's tile algebra (forward → out and saved row tensors,
backward → the problem's gradients). The numerics shared by the rules live here too: ``exp_shifted_`` (no denormal
weights, see ``EXP_FLOOR``), the l2 normalisation of LSSA's cosine scores and its backward, and ``Rows``, the per-block
row quantities of a two-pass backward. The algorithm and its sources: ``attnlab.attention.fast.chunked``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from attnlab.attention.masks import HIDDEN, PARTIAL, mask_blocks
from attnlab.types import ScoreMod, compute_dtype

DEFAULT_CHUNK = 128  # query rows per block
DEFAULT_WHOLE_ROWS = 2048  # up to this many keys, each query block is one tile (one fused pass per rule)
DEFAULT_KEY_BLOCK = 512  # longer sequences: key columns per tile, a tile being [B, H, chunk, key_block]
NEG_INF = float("-inf")
# PyTorch's vectorised exp takes a slow path below −87.3 (where float32 underflows; ~80× slower per element, ~12×
# for −inf), and tiny weights make denormal products in the next matmul (another ~100×: ALiBi scores are far below
# their row max). ``exp_shifted_`` clamps exponents at EXP_FLOOR and sends what was clamped to an exact 0: weights below
# e^−64 ≈ 1.6e-28 of the row max are dropped, far below float32 rounding of a row sum ≥ 1.
EXP_FLOOR = -64.0
EXP_ZERO = 1.5 * math.exp(EXP_FLOOR)
L2_EPS = 1e-12  # F.normalize's default: x̂ = x / max(‖x‖₂, L2_EPS)


def _accumulate_(out: Tensor, a: Tensor, b: Tensor) -> None:
    """out += a @ b for [B, G, m, k] @ [B, G, k, n] into a [B, G, m, n] view, without a temporary: one
    ``baddbmm_`` when out's batch dims merge into one (a slice along m of a contiguous tensor does), else ``+=``."""
    batch = out.shape[0] * out.shape[1]
    if out.stride(0) == out.shape[1] * out.stride(1) and out.stride(-1) == 1:
        flat = (
            out.view(batch, *out.shape[2:])
            if out.is_contiguous()
            else out.as_strided((batch, *out.shape[2:]), (out.stride(1), out.stride(2), 1), out.storage_offset())
        )
        flat.baddbmm_(a.reshape(batch, *a.shape[2:]), b.reshape(batch, *b.shape[2:]))
        return
    out += a @ b


def power_of(x: Tensor, p: float) -> Tensor:
    """x^p as a new tensor; an integral p uses PyTorch's faster integer power."""
    return x.pow(int(p)) if float(p).is_integer() else x.pow(p)


def softmax_floored(a: Tensor) -> Tensor:
    """softmax over the last axis with weights below EXP_ZERO set to 0 (no denormals reach the matmuls)."""
    return F.threshold_(torch.softmax(a, -1), EXP_ZERO, 0.0)


def exp_shifted_(x: Tensor) -> Tensor:
    """exp(x) in place for x ≤ 0 (shifted logits), with exp(x < −64) = 0 exactly; −inf (hidden keys) gives 0."""
    return F.threshold_(x.clamp_(min=EXP_FLOOR).exp_(), EXP_ZERO, 0.0)


def _l2_denominator(x: Tensor) -> Tensor:
    """max(‖x‖₂, ε) over the last axis, keepdim: F.normalize's divisor (computed the same way)."""
    return x.norm(2, -1, keepdim=True).clamp_min_(L2_EPS)


def _l2_normalize_backward_(x: Tensor, g: Tensor) -> Tensor:
    """∂L/∂x from g = ∂L/∂x̂ for x̂ = F.normalize(x, dim=-1), written into g.

    (g − x̂ (x̂·g)) / max(‖x‖, ε), without the projection where ‖x‖ < ε (there x̂ = x / ε is linear in x), as
    PyTorch's autograd of F.normalize gives.
    """
    norm = x.norm(2, -1, keepdim=True)
    den = norm.clamp_min(L2_EPS)
    x_hat = x / den
    dot = (x_hat * g).sum(-1, keepdim=True).mul_(norm >= L2_EPS)
    return g.sub_(x_hat.mul_(dot)).div_(den)


def score_mod_parameters(score_mod: ScoreMod | None) -> list[Tensor]:
    """Tensors requiring grad that ``score_mod`` closes over (T5's bias table); they get gradients.

    A score_mod whose learnable tensors are reachable some other way (through a module attribute read at call
    time) is detected by ``check_score_mod`` and refused rather than silently left without gradients.
    """
    if score_mod is None:
        return []
    found: list[Tensor] = []
    for cell in getattr(score_mod, "__closure__", None) or ():
        value = cell.cell_contents
        inner = score_mod_parameters(value) if callable(value) and not isinstance(value, Tensor) else []
        for t in inner if inner else [value]:  # a wrapped score_mod (positions): its own tensors too
            if isinstance(t, Tensor) and t.requires_grad and all(t is not f for f in found):
                found.append(t)
    return found


def check_score_mod(score_mod: ScoreMod, params: list[Tensor], like: Tensor) -> None:
    """Refuse a score_mod that reaches learnable tensors the chunked backward could not see."""
    if params or not torch.is_grad_enabled():
        return
    one = torch.zeros(1, 1, 1, 1, dtype=like.dtype, device=like.device)
    idx = torch.zeros(1, 1, 1, 1, dtype=torch.long, device=like.device)
    if score_mod(one, idx, idx, idx, idx).requires_grad:
        raise ValueError(
            "score_mod depends on learnable tensors that are not in its closure; the chunked backward cannot give "
            "them gradients: capture the tensors themselves (not a module) in the score_mod"
        )


@dataclass(frozen=True)
class Options:
    """What one chunked attention call needs besides q, k, v (static for the autograd Function)."""

    causal: bool
    window: int | None
    scale: float
    score_mod: ScoreMod | None
    documents: Tensor | None  # [B, Tk] integer document id per position: keys of other documents are hidden
    chunk: int
    key_block: int
    whole_rows: int = DEFAULT_WHOLE_ROWS
    need_lse: bool = False  # return the rows' logsumexp (softmax); rows that fit one tile compute it only then
    qk_norm: bool = False  # l2-normalise q and k inside the kernel (cosine scores: LSSA)
    # boolean [B|1, H|1, Tq, Tk], True where visible, the layer's rule folded in (``attnlab.attention.masks``):
    # used instead of causal / window / documents; its block form skips hidden tiles and leaves full ones unmasked
    mask: Tensor | None = None


class QueryBlock(NamedTuple):
    start: int  # query rows [start, stop)
    stop: int
    positions: Tensor  # absolute positions of the rows, [c] (queries are the last Tq of Tk positions)
    q: Tensor  # the rows' queries (l2-normalised with qk_norm) times the scale, grouped: [B, G, rep·c, D]
    lo: int  # keys [lo, hi) are visible to at least one row
    hi: int


class KeyTile(NamedTuple):
    start: int  # key columns [start, stop)
    stop: int
    mask: Tensor | None  # visibility of columns [m0, m1) of the tile, [c, m1 − m0] or [B, 1, c, ·]; None: all
    m0: int
    m1: int

    def fill_(self, x: Tensor, value: float) -> Tensor:
        """Set the hidden entries of a [B, H, c, w] tile to ``value``, in place."""
        if self.mask is not None:
            x[..., self.m0 : self.m1].masked_fill_(~self.mask, value)
        return x


def visible(positions: Tensor, keys: Tensor, causal: bool, window: int | None) -> Tensor | None:
    """Boolean [c, w]: key j visible to the query at absolute position p (``attnlab.attention.core.build_mask``)."""
    p, j = positions[:, None], keys[None, :]
    if causal:
        vis = j <= p
        return vis if window is None else vis & (j > p - window)
    if window is not None:
        return (p - j).abs() < window
    return None


def visible_count(positions: Tensor, t_k: int, causal: bool, window: int | None, dtype: torch.dtype) -> Tensor:
    """N_i, the number of keys each query sees, [c, 1] (equal to ``core.visible_counts`` on the dense mask)."""
    p = positions.to(torch.float64)
    if causal:
        n = p + 1 if window is None else torch.clamp(p + 1, max=window)
    elif window is not None:
        n = torch.clamp(p + window - 1, max=t_k - 1) - torch.clamp(p - window + 1, min=0) + 1
    else:
        n = torch.full_like(p, float(t_k))
    return n.to(dtype)[:, None]


class Problem:
    """One call's tensors and tiling: blocks of queries, tiles of keys, scores and the four gradient matmuls."""

    def __init__(self, q: Tensor, k: Tensor, v: Tensor, opts: Options, params: tuple[Tensor, ...] = ()):
        self.opts = opts
        self.b, self.h, self.t_q, self.d = q.shape
        self.g, self.t_k, self.e = k.shape[1], k.shape[2], v.shape[-1]
        self.rep = self.h // self.g
        self.offset = self.t_k - self.t_q
        self.dtype = compute_dtype(q)
        self.q, self.k, self.v = q.to(self.dtype), k.to(self.dtype), v.to(self.dtype)
        self.params = params
        dev = q.device
        self.b_idx = torch.arange(self.b, device=dev).view(self.b, 1, 1, 1)
        self.h_idx = torch.arange(self.h, device=dev).view(1, self.h, 1, 1)
        self.dq = self.dk = self.dv = None
        self.mask, self.blocks_of = opts.mask, None
        if self.mask is not None and self.t_k > opts.whole_rows:  # the block form of the mask, once per call
            self.blocks_of = mask_blocks(self.mask, opts.chunk, opts.key_block)
        self.dparams: list[Tensor | None] = [None] * len(params)
        # qk_norm: the queries' and keys' divisors max(‖x‖, ε), O(T); the normalised keys all at once only when
        # each block is one tile (short sequences: every block would otherwise normalise nearly all keys again)
        self.q_den = self.k_den = self.k_hat = None
        if opts.qk_norm:
            self.q_den, self.k_den = _l2_denominator(self.q), _l2_denominator(self.k)
            if self.t_k <= opts.whole_rows:
                self.k_hat = self.k / self.k_den

    # --- tiling -----------------------------------------------------------------------------------

    def key_range(self, p0: int, p1: int) -> tuple[int, int]:
        """Keys visible to some query in absolute positions [p0, p1]."""
        w, t_k = self.opts.window, self.t_k
        if self.mask is not None:  # the first and last key any of these rows sees
            cols = self.mask[..., p0 - self.offset : p1 + 1 - self.offset, :].reshape(-1, t_k).any(0).nonzero()
            return (int(cols[0]), int(cols[-1]) + 1) if cols.numel() else (0, 0)
        if self.opts.causal:
            return (0 if w is None else max(0, p0 - w + 1)), min(t_k, p1 + 1)
        if w is not None:
            return max(0, p0 - w + 1), min(t_k, p1 + w)
        return 0, t_k

    def blocks(self) -> Iterator[QueryBlock]:
        c = self.opts.chunk
        for a in range(0, self.t_q, c):
            stop = min(a + c, self.t_q)
            positions = torch.arange(self.offset + a, self.offset + stop, device=self.q.device)
            q = self.q[:, :, a:stop]
            if self.q_den is not None:
                q = q / self.q_den[:, :, a:stop]
            q = q * self.opts.scale  # [B, H, c, D]
            q = q.reshape(self.b, self.g, self.rep * (stop - a), self.d)  # group rows: [B, G, rep·c, D]
            lo, hi = self.key_range(self.offset + a, self.offset + stop - 1)
            yield QueryBlock(a, stop, positions, q, lo, hi)

    def counts(self, blk: QueryBlock) -> Tensor:
        """N_i, the number of keys each row of the block sees: [c, 1], or [B|1, H|1, c, 1] under a mask."""
        if self.mask is not None:
            return self.mask[..., blk.start : blk.stop, :].sum(-1, keepdim=True).to(self.dtype)
        return visible_count(blk.positions, self.t_k, self.opts.causal, self.opts.window, self.dtype)

    def masked_tiles(self, blk: QueryBlock) -> Iterator[KeyTile]:
        """Tiles under a caller's mask: one tile of the visible columns up to ``whole_rows`` keys, else the
        mask's block form on a grid of ``key_block`` columns (hidden tiles skipped, full tiles unmasked)."""
        assert self.mask is not None
        rows = self.mask[..., blk.start : blk.stop, :]
        if self.blocks_of is None:
            spans = [(blk.lo, blk.hi, PARTIAL)] if blk.hi > blk.lo else []
        else:
            kb, row = self.opts.key_block, self.blocks_of[blk.start // self.opts.chunk]
            spans = [(a, min(a + kb, self.t_k), int(row[a // kb])) for a in range(0, self.t_k, kb)]
        for kl, kh, state in spans:
            if state == HIDDEN:
                continue
            part = rows[..., kl:kh]
            hidden = ~part.reshape(-1, kh - kl).all(0) if state == PARTIAL else None
            if hidden is None or not bool(hidden.any()):
                yield KeyTile(kl, kh, None, 0, 0)
                continue
            cols = hidden.nonzero()
            m0, m1 = int(cols[0]), int(cols[-1]) + 1
            yield KeyTile(kl, kh, part[..., m0:m1], m0, m1)

    def tiles(self, blk: QueryBlock) -> Iterator[KeyTile]:
        if self.mask is not None:
            yield from self.masked_tiles(blk)
            return
        docs = self.opts.documents
        # short sequences: each block in one tile (fast, fused); long ones: bounded tiles (memory O(chunk·key_block))
        width = blk.hi - blk.lo if self.t_k <= self.opts.whole_rows else self.opts.key_block
        for kl in range(blk.lo, blk.hi, max(width, 1)):
            kh = min(kl + width, blk.hi)
            keys = torch.arange(kl, kh, device=self.q.device)
            mask = visible(blk.positions, keys, self.opts.causal, self.opts.window)
            if docs is not None:
                same = docs[:, blk.positions][:, :, None] == docs[:, kl:kh][:, None, :]  # [B, c, w]
                mask = same if mask is None else same & mask
            if mask is None:
                yield KeyTile(kl, kh, None, 0, 0)
                continue
            hidden = ~mask.reshape(-1, kh - kl).all(0)  # columns with at least one hidden entry
            if not bool(hidden.any()):
                yield KeyTile(kl, kh, None, 0, 0)
                continue
            cols = hidden.nonzero()
            m0, m1 = int(cols[0]), int(cols[-1]) + 1
            part = mask[..., m0:m1]
            yield KeyTile(kl, kh, part if docs is None else part[:, None], m0, m1)

    # --- tile algebra -----------------------------------------------------------------------------

    def keys(self, tile: KeyTile) -> Tensor:
        """The tile's keys, l2-normalised with qk_norm: [B, G, w, D]."""
        if self.k_hat is not None:
            return self.k_hat[:, :, tile.start : tile.stop]
        k = self.k[:, :, tile.start : tile.stop]
        return k if self.k_den is None else k / self.k_den[:, :, tile.start : tile.stop]

    def raw_scores(self, blk: QueryBlock, tile: KeyTile) -> Tensor:
        """(q·scale) kᵀ of one tile, [B, H, c, w]."""
        s = blk.q @ self.keys(tile).transpose(-1, -2)  # [B, G, rep·c, w]
        return s.view(self.b, self.h, blk.stop - blk.start, tile.stop - tile.start)

    def grids(self, blk: QueryBlock, tile: KeyTile) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        keys = torch.arange(tile.start, tile.stop, device=self.q.device)
        return self.b_idx, self.h_idx, blk.positions.view(1, 1, -1, 1), keys.view(1, 1, 1, -1)

    def scores(self, blk: QueryBlock, tile: KeyTile) -> Tensor:
        """The tile's scores after the score_mod: a fresh tensor the rules may overwrite."""
        s = self.raw_scores(blk, tile)
        if self.opts.score_mod is not None:
            s = self.opts.score_mod(s, *self.grids(blk, tile))
        return s

    def scores_for_backward(self, blk: QueryBlock, tile: KeyTile) -> tuple[Tensor, Any]:
        """Scores as in ``scores`` plus a handle through which ``add_grads`` differentiates the score_mod."""
        s = self.raw_scores(blk, tile)
        if self.opts.score_mod is None:
            return s, None
        with torch.enable_grad():
            leaf = s.requires_grad_()
            modded = self.opts.score_mod(leaf, *self.grids(blk, tile))
        return modded.detach().clone(), (leaf, modded)

    def grouped(self, x: Tensor) -> Tensor:
        """[B, H, c, n] → [B, G, rep·c, n] (a view when x is contiguous)."""
        return x.reshape(self.b, self.g, self.rep * x.shape[2], x.shape[3])

    def times_v(self, w: Tensor, tile: KeyTile) -> Tensor:
        """w V over the tile's keys: [B, H, c, w] → [B, H, c, E]."""
        out = self.grouped(w) @ self.v[:, :, tile.start : tile.stop]
        return out.view(self.b, self.h, w.shape[2], self.e)

    def d_weights(self, d_out_g: Tensor, tile: KeyTile, c: int) -> Tensor:
        """dw_ij = dO_i · v_j for the tile, [B, H, c, w] (fresh)."""
        dw = d_out_g @ self.v[:, :, tile.start : tile.stop].transpose(-1, -2)
        return dw.view(self.b, self.h, c, tile.stop - tile.start)

    def start_backward(self) -> None:
        self.dq = torch.zeros_like(self.q)
        self.dk = torch.zeros_like(self.k)
        self.dv = torch.zeros_like(self.v)

    def add_dv(self, w: Tensor, d_out_g: Tensor, tile: KeyTile) -> None:
        _accumulate_(self.dv[:, :, tile.start : tile.stop], self.grouped(w).transpose(-1, -2), d_out_g)

    def add_grads(self, blk: QueryBlock, tile: KeyTile, ds: Tensor, handle: Any, dq_g: Tensor) -> None:
        """Given ds = ∂L/∂(modified score) of a tile: through the score_mod, then into dq, dk (and its params)."""
        if handle is not None:
            leaf, modded = handle
            grads = torch.autograd.grad(modded, [leaf, *self.params], ds, allow_unused=True)
            ds = grads[0] if grads[0] is not None else torch.zeros_like(ds)
            for i, g in enumerate(grads[1:]):
                if g is not None:
                    self.dparams[i] = g if self.dparams[i] is None else self.dparams[i] + g
        ds_g = self.grouped(ds.contiguous())
        _accumulate_(dq_g, ds_g, self.keys(tile))
        _accumulate_(self.dk[:, :, tile.start : tile.stop], ds_g.transpose(-1, -2), blk.q)

    def finish_dq(self, blk: QueryBlock, dq_g: Tensor) -> None:
        c = blk.stop - blk.start
        dq = dq_g.view(self.b, self.h, c, self.d) * self.opts.scale
        if self.q_den is not None:  # ∂L/∂q̂ → ∂L/∂q
            dq = _l2_normalize_backward_(self.rows(self.q, blk), dq)
        self.dq[:, :, blk.start : blk.stop] = dq

    def finish_backward(self) -> None:
        """After the rule's backward: with qk_norm, dk holds ∂L/∂k̂; map it to ∂L/∂k in place, tile by tile."""
        if self.k_den is None:
            return
        step = max(self.opts.key_block, 1)
        for a in range(0, self.t_k, step):  # no [B, G, Tk, D] temporary
            _l2_normalize_backward_(self.k[:, :, a : a + step], self.dk[:, :, a : a + step])

    def rows(self, x: Tensor, blk: QueryBlock) -> Tensor:
        return x[:, :, blk.start : blk.stop]

    def new(self, *shape: int, fill: float = 0.0) -> Tensor:
        return torch.full(shape, fill, dtype=self.dtype, device=self.q.device)


class Rule:
    """A normaliser's tile algebra: ``forward`` → (out, saved row tensors); ``backward`` fills the problem's grads.

    ``lse``: the rule returns the row logsumexp as a differentiable second output (softmax only).
    """

    lse: ClassVar[bool] = False
    needs_counts: ClassVar[bool] = False

    def forward(self, pb: Problem) -> tuple[Tensor, tuple[Tensor, ...]]:  # pragma: no cover - abstract
        raise NotImplementedError

    def backward(
        self, pb: Problem, d_out: Tensor, out: Tensor, saved: tuple[Tensor, ...], d_lse: Tensor | None
    ) -> None:  # pragma: no cover - abstract
        raise NotImplementedError


def safe_max(m: Tensor) -> Tensor:
    """The running max with −inf (a row that has seen no visible key yet) replaced by 0, so exp(−inf − m) = 0."""
    return m.masked_fill(m == NEG_INF, 0.0)


class Rows(NamedTuple):
    """Per-block row quantities of a two-pass backward (LSSAR, clipped softmax)."""

    n_rows: int  # c
    d_out: Tensor  # dO grouped, [B, G, rep·c, E]
    dd: Tensor | None  # D_i = dO_i · o_i, [B, H, c, 1] (LSSAR)
    stats: tuple[Tensor, ...]  # the rule's own row tensors, [c, 1] or [B, H, c, 1]
