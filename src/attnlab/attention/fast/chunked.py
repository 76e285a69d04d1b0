"""Chunked online attention for score normalisers: exact, never a T×T tensor, forward or backward.

On CPU, softmax (with soft-capping, ALiBi or a T5 bias), Cog, sigmoid, LSSA and LSSAR also run as the same
algorithms compiled (``attnlab.attention.fast.native``). Which of the two computes a layer is the dispatch table's
choice (``attnlab.attention.dispatch``: paths ``native`` and ``chunked``), passed here as ``native=True / False``;
a direct call without it takes the kernels exactly when ``native.covers`` says they run the call and they are built.
This package holds the PyTorch form: ``tiling`` (the problem, its blocks and tiles, the ``Rule`` interface),
one file per tile rule (``rule_softmax``, ``rule_pointwise``, ``rule_softplus``, ``rule_clipped``), and here the
autograd Function and the entry points.

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

from typing import Any

import torch
from torch import Tensor

from attnlab.attention.core import AttnOutput, check_qkv
from attnlab.attention.fast import native as native_kernels
from attnlab.attention.fast.rule_clipped import ClippedSoftmaxRule
from attnlab.attention.fast.rule_pointwise import PointwiseRule
from attnlab.attention.fast.rule_softmax import SoftmaxRule
from attnlab.attention.fast.rule_softplus import ReweightedSoftplusRule, SoftplusRule
from attnlab.attention.fast.tiling import (
    DEFAULT_CHUNK,
    DEFAULT_KEY_BLOCK,
    DEFAULT_WHOLE_ROWS,
    Options,
    Problem,
    Rule,
    check_score_mod,
    exp_shifted_,
    score_mod_parameters,
)
from attnlab.attention.masks import guard_empty, zero_empty
from attnlab.types import PositionBias, ScoreMod

__all__ = [
    "DEFAULT_CHUNK",
    "DEFAULT_KEY_BLOCK",
    "DEFAULT_WHOLE_ROWS",
    "ChunkedAttention",
    "ClippedSoftmaxRule",
    "Options",
    "PointwiseRule",
    "Problem",
    "ReweightedSoftplusRule",
    "Rule",
    "SoftmaxRule",
    "SoftplusRule",
    "attend_chunked_rule",
    "check_shapes",
    "chunked_attention",
    "exp_shifted_",
    "make_options",
]


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
    check_qkv(q, k, v, causal)


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
    mask: Tensor | None = None,
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
    shape = (q.shape[2], k.shape[2])
    if mask is not None and (mask.dim() != 4 or mask.dtype != torch.bool or mask.shape[-2:] != shape):
        raise ValueError(
            f"mask must be boolean [B|1, H|1, Tq, Tk] = [., ., {q.shape[2]}, {k.shape[2]}]; got {mask.dtype} "
            f"{tuple(mask.shape)}"
        )
    params = score_mod_parameters(score_mod)
    if score_mod is not None:
        check_score_mod(score_mod, params, q)
    opts = Options(
        causal=causal,
        window=window,
        scale=q.shape[-1] ** -0.5 if scale is None else scale,
        score_mod=score_mod,
        documents=documents,
        mask=mask,
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
    bias: PositionBias | None = None,
    causal: bool = True,
    scale: float | None = None,
    window: int | None = None,
    documents: Tensor | None = None,
    mask: Tensor | None = None,
    chunk: int | None = None,
    key_block: int | None = None,
    whole_rows: int | None = None,
    need_lse: bool = False,
    qk_norm: bool = False,
    native: bool | None = None,
) -> tuple[Tensor, Tensor]:
    """(out [B, H, Tq, Dv], lse [B, H, Tq] or empty) of ``rule`` over q [B, H, Tq, D], k, v [B, Hkv, Tk, ·].

    Same conventions as ``attend_reference`` (scale 1/√D by default, bottom-right causal alignment, sliding
    ``window``); ``documents`` [B, Tk]: integer document ids, a query sees only keys of its own document.
    ``mask``: boolean [B|1, H|1, Tq, Tk] with the causal / window rule folded in (``attnlab.attention.masks``),
    used instead of them; hidden tiles are skipped (its block form), and the kernels never take it. A row that
    sees no key has output 0 (its lse, where asked, is that of every key: do not merge it).
    ``bias``: the score_mod's typed form (``PositionEncoding.score_bias()``), which the compiled kernels apply.
    ``need_lse``: also return the rows' logsumexp, differentiable (softmax rules only; else empty).
    ``qk_norm``: scores on F.normalize(q), F.normalize(k) (times ``scale``), normalised inside the kernel so no
    normalised copy is kept for the backward; gradients are with respect to the raw q, k.
    Tiling: blocks of ``chunk`` queries; with at most ``whole_rows`` keys each block is one tile, otherwise
    tiles of ``key_block`` keys (defaults: the module's DEFAULT_* constants).
    ``native``: True runs the compiled kernels (an error where they do not cover the call), False the PyTorch
    form; None (direct calls) the kernels where ``native.covers`` the call with the default tiling and they are
    built. Layers always pass the dispatch table's choice.
    """
    empty = None
    if mask is not None:  # a row that sees no key: computed over every key, then output 0 (``masks.guard_empty``)
        mask, empty = guard_empty(mask)
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
        mask=mask,
        chunk=chunk,
        key_block=key_block,
        whole_rows=whole_rows,
        need_lse=need_lse,
        qk_norm=qk_norm,
    )
    if native is None:
        native = (
            chunk is None
            and key_block is None
            and whole_rows is None  # explicit tiles: the PyTorch form, as asked
            and native_kernels.covers(
                rule,
                device=q.device.type,
                dtype=q.dtype,
                n_heads=q.shape[1],
                score_mod=score_mod is not None,
                bias=bias,
                qk_norm=qk_norm,
                documents=documents is not None or mask is not None,
                need_lse=need_lse,
            )
            and native_kernels.same_layout(q, k, v)
            and native_kernels.available()
        )
    if native:
        out = native_kernels.attend(rule, opts, q, k, v, bias)
        return out, out.new_zeros(0)
    out, lse = ChunkedAttention.apply(rule, opts, q, k, v, *params)
    return (out, lse) if empty is None else (zero_empty(out, empty), lse)


def attend_chunked_rule(
    rule: Rule,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    score_mod: ScoreMod | None = None,
    bias: PositionBias | None = None,
    causal: bool = True,
    scale: float | None = None,
    window: int | None = None,
    qk_norm: bool = False,
    native: bool | None = None,
    mask: Tensor | None = None,
) -> AttnOutput:
    """``chunked_attention`` as a normaliser's ``attend_chunked``: the output only (no scores, no weights)."""
    out, _ = chunked_attention(
        q,
        k,
        v,
        rule,
        score_mod=score_mod,
        bias=bias,
        causal=causal,
        scale=scale,
        window=window,
        mask=mask,
        qk_norm=qk_norm,
        native=native,
    )
    return AttnOutput(out, None, None)
