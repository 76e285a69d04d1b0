"""Chunked online attention for score normalisers: exact, never a T×T tensor, forward or backward.

On CPU, a call with the default tiling of softmax (with soft-capping, ALiBi or a T5 bias), Cog, sigmoid, LSSA or
LSSAR runs the same algorithms compiled (``attnlab.attention.fast.native``); everything below is the PyTorch form,
used for the other normalisers, devices and explicit tile sizes, and when the kernels are off or cannot be built.

Queries are cut into blocks of ``chunk`` rows. Up to ``whole_rows`` keys (2048) a block's visible keys are one
tile, and each rule runs in one pass with PyTorch's fused softmax / softmax-backward kernels where it has a
softmax; longer sequences cut the keys into tiles of ``key_block`` columns and run the online (flash) form, so
only one [B, H, chunk, key_block] tile of scores exists at a time. A custom ``autograd.Function``
saves q, k, v, the output and a few numbers per row (O(T) memory) and recomputes each tile's scores in the
backward pass, as FlashAttention does (Dao et al. 2022, arXiv:2205.14135; online softmax: Milakov &
Gimelshein 2018, arXiv:1805.02867). Causal and sliding-window masks skip invisible tiles and mask only the
partly visible columns; a ``score_mod`` (ALiBi, T5 bias) is applied tile by tile and differentiated tile by
tile, including its learnable tensors (found in its closure: see ``score_mod_parameters``).

Per row i, with s_ij the (scaled, score_mod-ified) scores, M the mask, D_i = dO_i · o_i and dw_ij = dO_i · v_j:

- ``SoftmaxRule`` (and Cog, ``signed=True``): w = sign(s)^[signed] · exp(a − m_i) / l_i with a = |s| or s,
  online running max m and sum l; backward ds = w · (sign·dw − D + g) (g: the gradient of the logsumexp);
  optional soft-capping s ← c·tanh(s/c) (Gemma 2) inside the rule.
- ``PointwiseRule`` (sigmoid, ReLU, ReLU²): w = f(s) / L_i^α, no row coupling; ds = f′(s) · dw / L_i^α.
- ``SoftplusRule`` (LSSA): u = softplus(c_i s), w = u / (Σu + ε); ds = σ(c_i s) c_i (dw − D) / (Σu + ε).
- ``ReweightedSoftplusRule`` (LSSAR): a row-sum pass for Σu, then r = ReLU(N_i A − O_i)^p, w = r / (Σr + ε);
  backward needs E_i = Σ_j A_ij dA_ij first (one extra pass; none when a block is one tile).
- ``ClippedSoftmaxRule``: a pass for the softmax normaliser (logsumexp), then w = clip((ζ−γ)p + γ, 0, 1);
  backward needs E_i = Σ_j p_ij dp_ij first (one extra pass; none when a block is one tile).

Numerics: weights below e^−64 of the row maximum are set to exactly 0 (see ``EXP_FLOOR``): PyTorch's exp is
~80× slower where float32 underflows, and denormal weights slow the next matmul ~100× (ALiBi makes many).

``qk_norm`` (LSSA's cosine scores): q and k are l2-normalised inside the kernel, as ``F.normalize(x, dim=-1)``
does (x / max(‖x‖, 1e-12)): each query block and each key tile on the fly (O(w·D) per tile against the tile's
O(c·w·D) matmul; short sequences normalise the keys once per call). The Function saves only the raw q, k, so no
normalised [B, H, T, D] copy outlives the call; dq, dk accumulate with respect to q̂, k̂ and are mapped back
through the Jacobian of the normalisation at the end, dx = (dx̂ − x̂ (x̂·dx̂)) / max(‖x‖, ε).

Everything is computed in float32 (float64 stays float64), as ``attend_reference`` does; outputs come back in
v's dtype and gradients in their inputs' dtypes. GQA / MQA: a group's query heads are stacked into one matmul
against their shared key/value head, so k and v are never repeated. Decoding with a KV cache (Tq < Tk, queries
are the last Tq positions) is the same computation with a position offset.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from attnlab.attention.core import AttnOutput
from attnlab.common import ScoreMod, compute_dtype

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


def _power(x: Tensor, p: float) -> Tensor:
    """x^p as a new tensor; an integral p uses PyTorch's faster integer power."""
    return x.pow(int(p)) if float(p).is_integer() else x.pow(p)


def _softmax(a: Tensor) -> Tensor:
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
    cells = getattr(score_mod, "__closure__", None) or ()
    found: list[Tensor] = []
    for cell in cells:
        value = cell.cell_contents
        if isinstance(value, Tensor) and value.requires_grad and all(value is not f for f in found):
            found.append(value)
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

    def tiles(self, blk: QueryBlock) -> Iterator[KeyTile]:
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


def _safe_max(m: Tensor) -> Tensor:
    """The running max with −inf (a row that has seen no visible key yet) replaced by 0, so exp(−inf − m) = 0."""
    return m.masked_fill(m == NEG_INF, 0.0)


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
            m_safe = _safe_max(m_new)
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
                w = _softmax(a)
                pb.rows(out, blk).copy_(pb.times_v(w if sign is None else w.mul_(sign), tiles[0]))
                continue
            c = blk.stop - blk.start
            m, l_sum = pb.new(pb.b, pb.h, c, fill=NEG_INF), pb.new(pb.b, pb.h, c)
            acc = pb.new(pb.b, pb.h, c, pb.e)
            for tile in tiles:
                a, sign, _ = self._logits(pb.scores(blk, tile), tile)
                m_new = torch.maximum(m, a.amax(-1))
                m_safe = _safe_max(m_new)
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
                p = _softmax(a)
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
        return self.row_scale(visible_count(blk.positions, pb.t_k, pb.opts.causal, pb.opts.window, pb.dtype))

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


def _length_scale(pb: Problem, blk: QueryBlock, d_head: int, on: bool) -> tuple[Tensor, Tensor]:
    """(c_i, N_i), [c, 1] each: LSSA's score multiplier log(d)·log(N_i) (or 1) and the visible counts."""
    n = visible_count(blk.positions, pb.t_k, pb.opts.causal, pb.opts.window, pb.dtype)
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


class _Rows(NamedTuple):
    """Per-block row quantities of a two-pass backward (LSSAR, clipped softmax)."""

    n_rows: int  # c
    d_out: Tensor  # dO grouped, [B, G, rep·c, E]
    dd: Tensor | None  # D_i = dO_i · o_i, [B, H, c, 1] (LSSAR)
    stats: tuple[Tensor, ...]  # the rule's own row tensors, [c, 1] or [B, H, c, 1]


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
        slope = _power(pos, self.power - 1)
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
                r = _power(self._excess_(u, f, offset), self.power)
                r_sum += r.sum(-1)
                acc += pb.times_v(r, tile)
            r_sum += self.eps
            acc /= r_sum[..., None]
            pb.rows(u_dens, blk).copy_(u_den[..., 0])
        return out, (u_dens, r_dens)

    def _tile(self, pb: Problem, s: Tensor, tile: KeyTile, rows: _Rows, first: bool) -> tuple[Tensor, Tensor, Tensor]:
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
            rows = _Rows(
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
            m_safe = _safe_max(m_new)
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
                w = self._forward_weights(_softmax(tiles[0].fill_(pb.scores(blk, tiles[0]), NEG_INF)))
                pb.rows(out, blk).copy_(pb.times_v(w, tiles[0]))
                continue
            lse = self._row_lse(pb, blk)
            acc = pb.rows(out, blk)
            for tile in tiles:
                _, _, w = self._weights(pb.scores(blk, tile), lse, tile)
                acc += pb.times_v(w, tile)
            pb.rows(lses, blk).copy_(lse[..., 0])
        return out, (lses,)

    def _d_softmax(self, pb: Problem, s: Tensor, tile: KeyTile, rows: _Rows, first: bool) -> tuple[Tensor, Tensor]:
        """(p, dp) on one tile: dp = (ζ−γ)·dw where the clip passes the gradient (inclusive bounds).

        ``rows.stats`` holds the row logsumexp, or nothing when the tile holds whole rows (softmax directly).
        """
        if rows.stats:
            p, y, w = self._weights(s, rows.stats[0], tile)
        else:
            p, y, w = self._clip(_softmax(tile.fill_(s, NEG_INF)))
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
                rows = _Rows(blk.stop - blk.start, pb.grouped(d_o.contiguous()), None, ())
                dq_g = torch.zeros_like(blk.q)
                s, handle = pb.scores_for_backward(blk, tiles[0])
                p, dp = self._d_softmax(pb, s, tiles[0], rows, first=True)
                pb.add_grads(blk, tiles[0], torch._softmax_backward_data(dp, p, -1, p.dtype), handle, dq_g)
                pb.finish_dq(blk, dq_g)
                continue
            rows = _Rows(blk.stop - blk.start, pb.grouped(d_o.contiguous()), None, (pb.rows(lses, blk)[..., None],))
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


class ChunkedAttention(torch.autograd.Function):
    """out, lse = chunked attention of a ``Rule``; the backward recomputes scores tile by tile."""

    @staticmethod
    def forward(ctx: Any, rule: Rule, opts: Options, q: Tensor, k: Tensor, v: Tensor, *params: Tensor):
        pb = Problem(q, k, v, opts, params)
        out, saved = rule.forward(pb)
        ctx.rule, ctx.opts, ctx.n_saved = rule, opts, len(saved)
        ctx.save_for_backward(q, k, v, out, *saved, *params)
        has_lse = rule.lse and opts.need_lse
        lse = saved[0] if has_lse else out.new_zeros(0)
        if not has_lse:
            ctx.mark_non_differentiable(lse)
        ctx.has_lse = has_lse
        return out.to(v.dtype), lse

    @staticmethod
    def backward(ctx: Any, d_out: Tensor, d_lse: Tensor | None):
        q, k, v, out, *rest = ctx.saved_tensors
        saved, params = tuple(rest[: ctx.n_saved]), tuple(rest[ctx.n_saved :])
        pb = Problem(q, k, v, ctx.opts, params)
        pb.start_backward()
        if d_out is None:
            d_out = torch.zeros_like(out)
        if not ctx.has_lse:
            d_lse = None
        ctx.rule.backward(pb, d_out.to(pb.dtype), out, saved, None if d_lse is None else d_lse.to(pb.dtype))
        pb.finish_backward()
        d_params = [None if g is None else g.to(p.dtype) for g, p in zip(pb.dparams, params, strict=True)]
        return None, None, pb.dq.to(q.dtype), pb.dk.to(k.dtype), pb.dv.to(v.dtype), *d_params


def check_shapes(q: Tensor, k: Tensor, v: Tensor, causal: bool) -> None:
    """The same shape contract as ``attend_reference``, as one-line errors."""
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"q, k, v must be [B, H, T, D]; got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if q.shape[1] % k.shape[1] != 0:
        raise ValueError(f"query heads ({q.shape[1]}) must be a multiple of key/value heads ({k.shape[1]})")
    if causal and q.shape[2] > k.shape[2]:
        raise ValueError(f"causal attention needs Tq <= Tk; got Tq={q.shape[2]}, Tk={k.shape[2]}")


def make_options(
    rule: Rule,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    score_mod: ScoreMod | None,
    causal: bool,
    scale: float | None,
    window: int | None,
    documents: Tensor | None,
    chunk: int | None = None,
    key_block: int | None = None,
    whole_rows: int | None = None,
    need_lse: bool = False,
    qk_norm: bool = False,
) -> tuple[Options, list[Tensor]]:
    """Check one call and build its ``Options`` and the score_mod's learnable tensors (chunked and flex paths)."""
    check_shapes(q, k, v, causal)
    if window is not None and window <= 0:
        raise ValueError(f"window={window} must be a positive number of keys")
    chunk, key_block = chunk or DEFAULT_CHUNK, key_block or DEFAULT_KEY_BLOCK
    whole_rows = DEFAULT_WHOLE_ROWS if whole_rows is None else whole_rows
    if chunk <= 0 or key_block <= 0 or whole_rows < 0:
        raise ValueError(f"chunk={chunk} and key_block={key_block} must be positive, whole_rows={whole_rows} >= 0")
    if documents is not None:
        if rule.needs_counts:
            raise ValueError(f"{type(rule).__name__} needs visible-key counts, which document masks do not give")
        if documents.shape != (q.shape[0], k.shape[2]):
            raise ValueError(f"documents must be [B, Tk] = {(q.shape[0], k.shape[2])}; got {tuple(documents.shape)}")
    params = score_mod_parameters(score_mod)
    if score_mod is not None:
        check_score_mod(score_mod, params, q)
    opts = Options(
        causal=causal,
        window=window,
        scale=q.shape[-1] ** -0.5 if scale is None else scale,
        score_mod=score_mod,
        documents=documents,
        chunk=chunk,
        key_block=key_block,
        whole_rows=whole_rows,
        need_lse=need_lse,
        qk_norm=qk_norm,
    )
    return opts, params


def chunked_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    rule: Rule,
    *,
    score_mod: ScoreMod | None = None,
    causal: bool = True,
    scale: float | None = None,
    window: int | None = None,
    documents: Tensor | None = None,
    chunk: int | None = None,
    key_block: int | None = None,
    whole_rows: int | None = None,
    need_lse: bool = False,
    qk_norm: bool = False,
) -> tuple[Tensor, Tensor]:
    """(out [B, H, Tq, Dv], lse [B, H, Tq] or empty) of ``rule`` over q [B, H, Tq, D], k, v [B, Hkv, Tk, ·].

    Same conventions as ``attend_reference`` (scale 1/√D by default, bottom-right causal alignment, sliding
    ``window``); ``documents`` [B, Tk]: integer document ids, a query sees only keys of its own document.
    ``need_lse``: also return the rows' logsumexp, differentiable (softmax rules only; else empty).
    ``qk_norm``: scores on F.normalize(q), F.normalize(k) (times ``scale``), normalised inside the kernel so no
    normalised copy is kept for the backward; gradients are with respect to the raw q, k.
    Tiling: blocks of ``chunk`` queries; with at most ``whole_rows`` keys each block is one tile, otherwise
    tiles of ``key_block`` keys (defaults: the module's DEFAULT_* constants).
    """
    opts, params = make_options(
        rule,
        q,
        k,
        v,
        score_mod=score_mod,
        causal=causal,
        scale=scale,
        window=window,
        documents=documents,
        chunk=chunk,
        key_block=key_block,
        whole_rows=whole_rows,
        need_lse=need_lse,
        qk_norm=qk_norm,
    )
    if chunk is None and key_block is None and whole_rows is None:  # explicit tiles: the PyTorch form, as asked
        from attnlab.attention.fast import native

        out = native.attend(rule, opts, q, k, v)
        if out is not None:
            return out, out.new_zeros(0)
    return ChunkedAttention.apply(rule, opts, q, k, v, *params)


def attend_chunked_rule(
    rule: Rule,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    score_mod: ScoreMod | None = None,
    causal: bool = True,
    scale: float | None = None,
    window: int | None = None,
    qk_norm: bool = False,
) -> AttnOutput:
    """``chunked_attention`` as a normaliser's ``attend_chunked``: the output only (no scores, no weights)."""
    out, _ = chunked_attention(
        q, k, v, rule, score_mod=score_mod, causal=causal, scale=scale, window=window, qk_norm=qk_norm
    )
    return AttnOutput(out, None, None)
