"""Tile helpers shared by every Triton kernel of the chunked algorithm: visibility, key / query ranges, counts.

Conventions are ``attnlab.attention.core``'s: q [B, Hq, Tq, D], k [B, Hkv, Tk, D], v [B, Hkv, Tk, Dv]; query row
i sits at absolute position p = i + (Tk − Tq) (the last Tq positions, as in decoding with a KV cache); causal
attention shows key j to position p when j ≤ p, a sliding window of w keys adds j > p − w (non-causal: |p − j| < w).
The key loop of a query block and the query loop of a key block visit only tiles that hold a visible entry, as
FlashAttention-2 does (Dao 2023, arXiv:2307.08691, §3.1.1); entries outside the mask are set by each rule (−inf
before an exponential, 0 after a pointwise map).

Everything here is ``triton.jit`` code: it runs compiled on a GPU and, with ``TRITON_INTERPRET=1`` set before
triton is imported, under Triton's interpreter on CPU tensors (how the tests check it without a GPU).
"""

from __future__ import annotations

import triton
import triton.language as tl

from attnlab.attention.fast.triton import spec

# Rule ids (``spec``) as constexprs: each id compiles its own kernel, so untaken branches cost nothing.
SIGMOID = tl.constexpr(spec.SIGMOID)
SOFTMAX = tl.constexpr(spec.SOFTMAX)
COG = tl.constexpr(spec.COG)
LSSA = tl.constexpr(spec.LSSA)
LSSAR = tl.constexpr(spec.LSSAR)
CLIPPED = tl.constexpr(spec.CLIPPED)
NEG_BIG = tl.constexpr(-1e30)  # the running max before any visible key (finite: exp(−inf − NEG_BIG) = 0, no NaN)


@triton.jit
def load_tile(base, rows, n_rows, cols, n_cols, s_row, s_col):
    """x[rows, cols] of a [n_rows, n_cols] matrix at ``base`` with the given strides; 0 outside."""
    ptrs = base + rows[:, None].to(tl.int64) * s_row + cols[None, :] * s_col
    return tl.load(ptrs, mask=(rows[:, None] < n_rows) & (cols[None, :] < n_cols), other=0.0)


@triton.jit
def store_tile(base, x, rows, n_rows, cols, n_cols, s_row, s_col):
    """x → base[rows, cols] (converted to the pointer's dtype), inside the [n_rows, n_cols] bounds only."""
    ptrs = base + rows[:, None].to(tl.int64) * s_row + cols[None, :] * s_col
    tl.store(ptrs, x.to(base.dtype.element_ty), mask=(rows[:, None] < n_rows) & (cols[None, :] < n_cols))


@triton.jit
def visible(pos_q, row_ok, keys, t_k, window, CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr):
    """Boolean [M, N]: key ``keys[n]`` visible to the query at position ``pos_q[m]`` (``core.build_mask``)."""
    vis = row_ok[:, None] & (keys[None, :] < t_k)
    if CAUSAL:
        vis = vis & (keys[None, :] <= pos_q[:, None])
        if HAS_WINDOW:
            vis = vis & (keys[None, :] > pos_q[:, None] - window)
    elif HAS_WINDOW:
        diff = pos_q[:, None] - keys[None, :]
        vis = vis & (diff < window) & (diff > -window)
    return vis


@triton.jit
def key_range(first_pos, last_pos, t_k, window, CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr, BLOCK_N: tl.constexpr):
    """[lo, hi): the keys some query at positions [first_pos, last_pos] sees; lo rounded down to a tile start."""
    lo = first_pos * 0
    hi = lo + t_k
    if CAUSAL:
        hi = tl.minimum(hi, last_pos + 1)
        if HAS_WINDOW:
            lo = tl.maximum(lo, first_pos - window + 1)
    elif HAS_WINDOW:
        lo = tl.maximum(lo, first_pos - window + 1)
        hi = tl.minimum(hi, last_pos + window)
    return (lo // BLOCK_N) * BLOCK_N, hi


@triton.jit
def query_range(
    first_key, last_key, t_q, offset, window, CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr, BLOCK_M: tl.constexpr
):
    """[lo, hi): the query rows that see some key in [first_key, last_key]; lo rounded down to a tile start."""
    lo = first_key * 0
    hi = lo + t_q
    if CAUSAL:
        lo = tl.maximum(lo, first_key - offset)
        if HAS_WINDOW:
            hi = tl.minimum(hi, last_key + window - offset)
    elif HAS_WINDOW:
        lo = tl.maximum(lo, first_key - window + 1 - offset)
        hi = tl.minimum(hi, last_key + window - offset)
    return (lo // BLOCK_M) * BLOCK_M, hi


@triton.jit
def visible_count(pos_q, t_k, window, CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr):
    """N_i, the number of keys the query at ``pos_q`` sees, float32 [M] (``chunked.visible_count``)."""
    p = pos_q.to(tl.float32)
    if CAUSAL:
        n = p + 1.0
        if HAS_WINDOW:
            n = tl.minimum(n, window * 1.0)
    elif HAS_WINDOW:
        n = tl.minimum(p + window - 1.0, t_k - 1.0) - tl.maximum(p - window + 1.0, 0.0) + 1.0
    else:
        n = p * 0.0 + t_k
    return tl.maximum(n, 1.0)  # ≥ 1 on real rows; keeps padding rows (beyond Tq) finite


@triton.jit
def score_tile(
    q,
    k_base,
    s_kt,
    s_kd,
    start_n,
    t_k,
    d_head,
    pos_q,
    row_ok,
    scale,
    window,
    CAUSAL: tl.constexpr,
    HAS_WINDOW: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
    QK_NORM: tl.constexpr,
):
    """(s, vis, keys, k) of one key tile: scaled scores q kᵀ·scale in float32 [M, N], their visibility, the key
    indices and the loaded keys [N, D] (l2-normalised with ``QK_NORM``; the backward multiplies by them again)."""
    keys = start_n + tl.arange(0, BLOCK_N)
    dims = tl.arange(0, BLOCK_D)
    k = load_tile(k_base, keys, t_k, dims, d_head, s_kt, s_kd)
    if QK_NORM:
        k = l2_normalize(k)[0]
    s = mm(q, tl.trans(k), PRECISION, UPCAST) * scale
    return s, visible(pos_q, row_ok, keys, t_k, window, CAUSAL, HAS_WINDOW), keys, k


@triton.jit
def mm(a, b, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """a @ b accumulated in float32. ``UPCAST``: both operands in float32 first, for Triton 3.9's interpreter,
    whose dot multiplies bf16 operands' raw bits; a product of two bf16 numbers is exact in float32, so this is the
    same arithmetic as a bf16 tensor-core product with float32 accumulation."""
    if UPCAST:
        out = tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    else:
        out = tl.dot(a, b, input_precision=PRECISION)
    return out


@triton.jit
def l2_normalize(x):
    """(x̂, ‖x‖) per row, in float32: x̂ = x / max(‖x‖₂, 1e-12), as F.normalize(x, dim=-1) (LSSA's cosine
    scores, normalised in the kernel: no rounding of x̂ to the input dtype, no normalised copy saved)."""
    xf = x.to(tl.float32)
    norm = tl.sqrt(tl.sum(xf * xf, 1))
    return xf / tl.maximum(norm, 1e-12)[:, None], norm


@triton.jit
def l2_normalize_backward(x_hat, norm, g):
    """∂L/∂x from g = ∂L/∂x̂: (g − x̂ (x̂·g)) / max(‖x‖, ε), without the projection where ‖x‖ < ε (x̂ = x / ε is
    linear there), as PyTorch's autograd of F.normalize gives (``chunked._l2_normalize_backward_``)."""
    dot = tl.where(norm >= 1e-12, tl.sum(x_hat * g, 1), 0.0)
    return (g - x_hat * dot[:, None]) / tl.maximum(norm, 1e-12)[:, None]


@triton.jit
def softplus(x):
    """log(1 + eˣ) in float32 without overflow: max(x, 0) + log1p(e^−|x|), log1p by its series below 1e-4 (where
    log(1 + z) rounds z away); within an ulp of PyTorch's softplus, which is the identity above 20."""
    z = tl.exp(-tl.abs(x))
    return tl.maximum(x, 0.0) + tl.where(z < 1e-4, z * (1.0 - 0.5 * z), tl.log(1.0 + z))


@triton.jit
def power(x, p, P_INT: tl.constexpr):
    """x^p for x ≥ 0 (0 at x = 0 for p > 0): by P_INT multiplications when p is a small whole number (P_INT > 0;
    exact to a few ulps), else exp2(p·log2 x)."""
    if P_INT > 0:
        y = x
        for _ in tl.static_range(P_INT - 1):
            y = y * x
    else:
        y = tl.where(x > 0, tl.exp2(p * tl.log2(tl.maximum(x, 1e-38))), 0.0)
    return y
