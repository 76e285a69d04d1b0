"""The three Triton kernels of the chunked algorithm, one per direction, each specialised per rule (a constexpr).

- ``attn_fwd``: a program per (query block, batch · query head): the rule's row pass when it has one (clipped
  softmax's logsumexp, LSSAR's Σu), then one pass over the visible key tiles accumulating w·V in float32; saves
  the rule's row statistics (O(T) memory), never a T×T tile.
- ``attn_bwd_dq``: a program per (query block, batch · query head): D_i = dO_i · o_i (saved for ``attn_bwd_dkdv``),
  the rule's backward row pass when it has one (clipped softmax's E, LSSAR's S; saved as well), then dq.
- ``attn_bwd_dkdv``: a program per (key block, batch · key/value head): loops over the group's query heads (GQA:
  no atomics, no repeated k, v) and the query tiles that see the block, recomputing scores as FlashAttention-2
  does (Dao 2023, arXiv:2307.08691, Algorithm 2), and writes dk, dv once.

Matrix products take the inputs' dtype (bf16 / fp16 on tensor cores, float32 as IEEE float32, never TF32) and
accumulate in float32; weights and score gradients are rounded to the inputs' dtype before their product, as in
FlashAttention. With ``QK_NORM`` (LSSA's cosine scores) q and k are l2-normalised in float32 as they are loaded
(each query block once, each key tile as it is visited) and the score products take float32 operands; dq and dk are
mapped back through the normalisation's Jacobian before they are stored. The rule's per-tile algebra lives in
``pointwise``, ``softmax``, ``softplus`` and ``clipped``.

Rule parameters p0–p3: sigmoid (bias); softmax, Cog (none); LSSA (log d, ε); LSSAR (log d, ε, p, free rows);
clipped softmax (γ, ζ).
"""

from __future__ import annotations

import triton
import triton.language as tl

from attnlab.attention.fast.triton.clipped import clipped_grads, clipped_weights
from attnlab.attention.fast.triton.common import (
    CLIPPED,
    COG,
    LSSA,
    LSSAR,
    NEG_BIG,
    SIGMOID,
    SOFTMAX,
    key_range,
    l2_normalize,
    l2_normalize_backward,
    load_tile,
    mm,
    query_range,
    score_tile,
    store_tile,
    visible,
    visible_count,
)
from attnlab.attention.fast.triton.pointwise import sigmoid_grads, sigmoid_weights
from attnlab.attention.fast.triton.softmax import logits, online_update, sign_of, softmax_grads
from attnlab.attention.fast.triton.softplus import (
    lssa_grads,
    lssa_terms,
    lssar_grads,
    lssar_weights,
    row_terms,
    softplus,
)


@triton.jit
def rule_grads(
    s, vis, dw, stat_a, stat_b, stat_c, dd, e_sum, c, n, offset, p0, p1, p2,
    RULE: tl.constexpr, P_INT: tl.constexpr, P1_INT: tl.constexpr,
):  # fmt: skip
    """(w, ds, row-pass terms) of one tile for the rule: weights for dv, score gradients for dq and dk."""
    if RULE == SIGMOID:
        w, ds = sigmoid_grads(s, vis, dw, p0)
        extra = ds
    elif RULE == SOFTMAX:
        w, ds = softmax_grads(s, vis, dw, stat_a, dd, False)
        extra = ds
    elif RULE == COG:
        w, ds = softmax_grads(s, vis, dw, stat_a, dd, True)
        extra = ds
    elif RULE == LSSA:
        w, ds = lssa_grads(s, vis, dw, c, stat_a, dd)
        extra = ds
    elif RULE == LSSAR:
        w, ds, extra = lssar_grads(s, vis, dw, c, n, stat_a, stat_b, stat_c, offset, dd, e_sum, p2, P_INT, P1_INT)
    else:
        w, ds, extra = clipped_grads(s, vis, dw, stat_a, e_sum, p0, p1)
    return w, tl.where(vis, ds, 0.0), extra


@triton.jit
def counts_and_terms(pos_q, t_k, window, p0, p3, CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr,
                     LENGTH_SCALE: tl.constexpr):  # fmt: skip
    """(N, c, O) per query row: visible counts, LSSA's score multiplier, LSSAR's offset."""
    n = visible_count(pos_q, t_k, window, CAUSAL, HAS_WINDOW)
    c, offset = row_terms(n, p0, p3, LENGTH_SCALE)
    return n, c, offset


@triton.jit
def attn_fwd(
    Q, K, V, OUT, STAT_A, STAT_B, STAT_C,
    s_qb, s_qh, s_qt, s_qd, s_kb, s_kh, s_kt, s_kd, s_vb, s_vh, s_vt, s_vd, s_ob, s_oh, s_ot, s_od,
    n_heads, rep, t_q, t_k, d_head, d_value, scale, window, p0, p1, p2, p3,
    RULE: tl.constexpr, CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr, LENGTH_SCALE: tl.constexpr,
    P_INT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_E: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr, QK_NORM: tl.constexpr,
):  # fmt: skip
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // n_heads).to(tl.int64)
    h = (pid_bh % n_heads).to(tl.int64)
    hk = h // rep
    offset = t_k - t_q
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < t_q
    pos_q = rows + offset
    dims = tl.arange(0, BLOCK_D)
    vdims = tl.arange(0, BLOCK_E)
    q = load_tile(Q + b * s_qb + h * s_qh, rows, t_q, dims, d_head, s_qt, s_qd)
    if QK_NORM:
        q = l2_normalize(q)[0]
    k_base = K + b * s_kb + hk * s_kh
    v_base = V + b * s_vb + hk * s_vh
    lo, hi = key_range(
        pid_m * BLOCK_M + offset, tl.minimum(pid_m * BLOCK_M + BLOCK_M, t_q) - 1 + offset, t_k, window,
        CAUSAL, HAS_WINDOW, BLOCK_N,
    )  # fmt: skip
    n, c, row_offset = counts_and_terms(pos_q, t_k, window, p0, p3, CAUSAL, HAS_WINDOW, LENGTH_SCALE)

    # the rule's row pass: clipped softmax's logsumexp, LSSAR's U = Σu + ε
    m = tl.full([BLOCK_M], NEG_BIG, tl.float32)
    l_sum = tl.zeros([BLOCK_M], tl.float32)
    row_lse = l_sum
    u_den = l_sum
    u_max = l_sum  # LSSAR: the row's largest u, for x_max
    x_max = l_sum + 1.0
    if (RULE == CLIPPED) or (RULE == LSSAR):  # noqa: SIM109 (triton: no `in`)
        for start_n in range(lo, hi, BLOCK_N):
            s, vis = score_tile(
                q, k_base, s_kt, s_kd, start_n, t_k, d_head, pos_q, row_ok, scale, window,
                CAUSAL, HAS_WINDOW, BLOCK_N, BLOCK_D, PRECISION, UPCAST, QK_NORM,
            )[:2]  # fmt: skip
            if RULE == CLIPPED:
                m, l_sum = online_update(tl.where(vis, s, float("-inf")), m, l_sum)[2:]
            else:
                u = tl.where(vis, softplus(c[:, None] * s), 0.0)
                l_sum += tl.sum(u, 1)
                u_max = tl.maximum(u_max, tl.max(u, 1))
        if RULE == CLIPPED:
            row_lse = m + tl.log(tl.maximum(l_sum, 1e-30))  # l ≥ 1 on real rows (the max term is e⁰)
        else:
            u_den = l_sum + p1
            x_max = tl.maximum(n * u_max / u_den - row_offset, 0.0)  # the row's largest x = N·A − O
            x_max = tl.where(x_max > 0, x_max, 1.0)  # a row of r = 0 (equal scores): any scale

    acc = tl.zeros([BLOCK_M, BLOCK_E], tl.float32)
    m = tl.full([BLOCK_M], NEG_BIG, tl.float32)
    den = tl.zeros([BLOCK_M], tl.float32)
    for start_n in range(lo, hi, BLOCK_N):
        s, vis, keys = score_tile(
            q, k_base, s_kt, s_kd, start_n, t_k, d_head, pos_q, row_ok, scale, window,
            CAUSAL, HAS_WINDOW, BLOCK_N, BLOCK_D, PRECISION, UPCAST, QK_NORM,
        )[:3]  # fmt: skip
        v = load_tile(v_base, keys, t_k, vdims, d_value, s_vt, s_vd)
        if RULE == SIGMOID:
            w = sigmoid_weights(s, vis, p0)
        elif (RULE == SOFTMAX) or (RULE == COG):  # noqa: SIM109
            w, alpha, m, den = online_update(logits(s, vis, RULE == COG), m, den)
            if RULE == COG:
                w = w * sign_of(s)
            acc = acc * alpha[:, None]
        elif RULE == LSSA:
            w = lssa_terms(s, vis, c)[0]
            den += tl.sum(w, 1)
        elif RULE == LSSAR:
            w = lssar_weights(s, vis, c, n, u_den, row_offset, x_max, p2, P_INT)
            den += tl.sum(w, 1)
        else:
            w = clipped_weights(s, vis, row_lse, p0, p1)[2]
        acc += mm(w.to(v.dtype), v, PRECISION, UPCAST)

    stat_a = den
    stat_b = den
    if (RULE == SOFTMAX) or (RULE == COG):  # noqa: SIM109
        acc = acc / tl.where(den > 0, den, 1.0)[:, None]
        stat_a = m + tl.log(tl.maximum(den, 1e-30))  # the row logsumexp (den ≥ 1 on real rows)
    elif RULE == LSSA:
        stat_a = den + p1  # U = Σu + ε
        acc = acc / stat_a[:, None]
    elif RULE == LSSAR:
        stat_a = u_den
        stat_b = den + tl.exp2(tl.minimum(tl.log2(p1) - p2 * tl.log2(x_max), 100.0))  # R / x_maxᵖ
        acc = acc / stat_b[:, None]
    elif RULE == CLIPPED:
        stat_a = row_lse
    store_tile(OUT + b * s_ob + h * s_oh, acc, rows, t_q, vdims, d_value, s_ot, s_od)
    tl.store(STAT_A + pid_bh * t_q + rows, stat_a, mask=row_ok)
    tl.store(STAT_B + pid_bh * t_q + rows, stat_b, mask=row_ok)
    tl.store(STAT_C + pid_bh * t_q + rows, x_max, mask=row_ok)


@triton.jit
def attn_bwd_dq(
    Q, K, V, OUT, DO, DQ, STAT_A, STAT_B, STAT_C, STAT_D, STAT_E,
    s_qb, s_qh, s_qt, s_qd, s_kb, s_kh, s_kt, s_kd, s_vb, s_vh, s_vt, s_vd, s_ob, s_oh, s_ot, s_od,
    n_heads, rep, t_q, t_k, d_head, d_value, scale, window, p0, p1, p2, p3,
    RULE: tl.constexpr, CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr, LENGTH_SCALE: tl.constexpr,
    P_INT: tl.constexpr, P1_INT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_E: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr, QK_NORM: tl.constexpr,
):  # fmt: skip
    """dq of a query block (dq has q's strides, dO has o's); also saves D and the rule's backward row pass."""
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // n_heads).to(tl.int64)
    h = (pid_bh % n_heads).to(tl.int64)
    hk = h // rep
    offset = t_k - t_q
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < t_q
    pos_q = rows + offset
    dims = tl.arange(0, BLOCK_D)
    vdims = tl.arange(0, BLOCK_E)
    q = load_tile(Q + b * s_qb + h * s_qh, rows, t_q, dims, d_head, s_qt, s_qd)
    if QK_NORM:
        q, q_norm = l2_normalize(q)
    d_o = load_tile(DO + b * s_ob + h * s_oh, rows, t_q, vdims, d_value, s_ot, s_od)
    o = load_tile(OUT + b * s_ob + h * s_oh, rows, t_q, vdims, d_value, s_ot, s_od)
    dd = tl.sum(d_o.to(tl.float32) * o.to(tl.float32), 1)  # D_i = dO_i · o_i
    tl.store(STAT_D + pid_bh * t_q + rows, dd, mask=row_ok)
    stat_a = tl.load(STAT_A + pid_bh * t_q + rows, mask=row_ok, other=1.0)
    stat_b = tl.load(STAT_B + pid_bh * t_q + rows, mask=row_ok, other=1.0)
    stat_c = tl.load(STAT_C + pid_bh * t_q + rows, mask=row_ok, other=1.0)
    k_base = K + b * s_kb + hk * s_kh
    v_base = V + b * s_vb + hk * s_vh
    lo, hi = key_range(
        pid_m * BLOCK_M + offset, tl.minimum(pid_m * BLOCK_M + BLOCK_M, t_q) - 1 + offset, t_k, window,
        CAUSAL, HAS_WINDOW, BLOCK_N,
    )  # fmt: skip
    n, c, row_offset = counts_and_terms(pos_q, t_k, window, p0, p3, CAUSAL, HAS_WINDOW, LENGTH_SCALE)

    e_sum = tl.zeros([BLOCK_M], tl.float32)  # clipped softmax: E = Σ p·dp; LSSAR: S = Σ N·A·y / N
    if (RULE == CLIPPED) or (RULE == LSSAR):  # noqa: SIM109 (triton: no `in`)
        for start_n in range(lo, hi, BLOCK_N):
            s, vis, keys, k = score_tile(
                q, k_base, s_kt, s_kd, start_n, t_k, d_head, pos_q, row_ok, scale, window,
                CAUSAL, HAS_WINDOW, BLOCK_N, BLOCK_D, PRECISION, UPCAST, QK_NORM,
            )  # fmt: skip
            v = load_tile(v_base, keys, t_k, vdims, d_value, s_vt, s_vd)
            dw = mm(d_o, tl.trans(v), PRECISION, UPCAST)
            terms = rule_grads(
                s, vis, dw, stat_a, stat_b, stat_c, dd, e_sum, c, n, row_offset, p0, p1, p2, RULE, P_INT, P1_INT
            )[2]
            e_sum += tl.sum(tl.where(vis, terms, 0.0), 1)
        tl.store(STAT_E + pid_bh * t_q + rows, e_sum, mask=row_ok)

    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for start_n in range(lo, hi, BLOCK_N):
        s, vis, keys, k = score_tile(
            q, k_base, s_kt, s_kd, start_n, t_k, d_head, pos_q, row_ok, scale, window,
            CAUSAL, HAS_WINDOW, BLOCK_N, BLOCK_D, PRECISION, UPCAST, QK_NORM,
        )  # fmt: skip
        v = load_tile(v_base, keys, t_k, vdims, d_value, s_vt, s_vd)
        dw = mm(d_o, tl.trans(v), PRECISION, UPCAST)
        ds = rule_grads(
            s, vis, dw, stat_a, stat_b, stat_c, dd, e_sum, c, n, row_offset, p0, p1, p2, RULE, P_INT, P1_INT
        )[1]
        dq += mm(ds.to(k.dtype), k, PRECISION, UPCAST)
    dq = dq * scale
    if QK_NORM:  # ∂L/∂q̂ → ∂L/∂q
        dq = l2_normalize_backward(q, q_norm, dq)
    store_tile(DQ + b * s_qb + h * s_qh, dq, rows, t_q, dims, d_head, s_qt, s_qd)


@triton.jit
def attn_bwd_dkdv(
    Q, K, V, DO, DK, DV, STAT_A, STAT_B, STAT_C, STAT_D, STAT_E,
    s_qb, s_qh, s_qt, s_qd, s_kb, s_kh, s_kt, s_kd, s_vb, s_vh, s_vt, s_vd, s_ob, s_oh, s_ot, s_od,
    n_kv_heads, rep, t_q, t_k, d_head, d_value, scale, window, p0, p1, p2, p3,
    RULE: tl.constexpr, CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr, LENGTH_SCALE: tl.constexpr,
    P_INT: tl.constexpr, P1_INT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_E: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr, QK_NORM: tl.constexpr,
):  # fmt: skip
    """dk, dv of a key block of one key/value head (dk, dv have k's and v's strides, dO has o's)."""
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // n_kv_heads).to(tl.int64)
    hk = (pid_bh % n_kv_heads).to(tl.int64)
    offset = t_k - t_q
    keys = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    dims = tl.arange(0, BLOCK_D)
    vdims = tl.arange(0, BLOCK_E)
    k = load_tile(K + b * s_kb + hk * s_kh, keys, t_k, dims, d_head, s_kt, s_kd)
    if QK_NORM:
        k, k_norm = l2_normalize(k)
    v = load_tile(V + b * s_vb + hk * s_vh, keys, t_k, vdims, d_value, s_vt, s_vd)
    lo, hi = query_range(
        pid_n * BLOCK_N, tl.minimum(pid_n * BLOCK_N + BLOCK_N, t_k) - 1, t_q, offset, window,
        CAUSAL, HAS_WINDOW, BLOCK_M,
    )  # fmt: skip
    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_E], tl.float32)
    for g in range(rep):
        h = hk * rep + g
        row_base = (b * n_kv_heads * rep + h) * t_q  # the row statistics of (b, h)
        for start_m in range(lo, hi, BLOCK_M):
            rows = start_m + tl.arange(0, BLOCK_M)
            row_ok = rows < t_q
            pos_q = rows + offset
            q = load_tile(Q + b * s_qb + h * s_qh, rows, t_q, dims, d_head, s_qt, s_qd)
            if QK_NORM:
                q = l2_normalize(q)[0]
            d_o = load_tile(DO + b * s_ob + h * s_oh, rows, t_q, vdims, d_value, s_ot, s_od)
            stat_a = tl.load(STAT_A + row_base + rows, mask=row_ok, other=1.0)
            stat_b = tl.load(STAT_B + row_base + rows, mask=row_ok, other=1.0)
            stat_c = tl.load(STAT_C + row_base + rows, mask=row_ok, other=1.0)
            dd = tl.load(STAT_D + row_base + rows, mask=row_ok, other=0.0)
            e_sum = tl.load(STAT_E + row_base + rows, mask=row_ok, other=0.0)
            n, c, row_offset = counts_and_terms(pos_q, t_k, window, p0, p3, CAUSAL, HAS_WINDOW, LENGTH_SCALE)
            s = mm(q, tl.trans(k), PRECISION, UPCAST) * scale
            vis = visible(pos_q, row_ok, keys, t_k, window, CAUSAL, HAS_WINDOW)
            dw = mm(d_o, tl.trans(v), PRECISION, UPCAST)
            w, ds = rule_grads(
                s, vis, dw, stat_a, stat_b, stat_c, dd, e_sum, c, n, row_offset, p0, p1, p2, RULE, P_INT, P1_INT
            )[:2]
            dv += mm(tl.trans(w.to(d_o.dtype)), d_o, PRECISION, UPCAST)
            dk += mm(tl.trans(ds.to(q.dtype)), q, PRECISION, UPCAST)
    dk = dk * scale
    if QK_NORM:  # ∂L/∂k̂ → ∂L/∂k
        dk = l2_normalize_backward(k, k_norm, dk)
    store_tile(DK + b * s_kb + hk * s_kh, dk, keys, t_k, dims, d_head, s_kt, s_kd)
    store_tile(DV + b * s_vb + hk * s_vh, dv, keys, t_k, vdims, d_value, s_vt, s_vd)
