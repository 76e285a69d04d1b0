"""FlexAttention for the softmax family: a compiled kernel for score_mods, windows and document masks.

    out_i = Σ_j softmax_j( cap( score_mod(s_ij) ) ) v_j   over keys j visible under causal ∧ window ∧ same-document,
    cap(s) = c·tanh(s / c) when soft-capping (Gemma 2), else s

FlexAttention (He, Guessous, Liang, Dong, "FlexAttention: The Flexibility of PyTorch with the Performance of
FlashAttention", 2024, arXiv:2412.05496) turns a pointwise ``score_mod`` (attnlab's ``ScoreMod`` convention is
the same) and a ``mask_mod`` into one fused kernel via ``torch.compile``. ALiBi and the T5 bias are position
score_mods, soft-capping is a softmax option, sliding windows and documents are block masks (fully hidden
blocks are skipped).

CPU: torch 2.13's FlexAttention has neither a backward nor a logsumexp output on CPU (both raise).
``FlexSoftmax`` therefore runs the compiled forward for the output only and leaves the rest to the chunked
softmax of ``attnlab.attention.fast.chunked``: its recomputing backward (O(T·chunk) memory, gradients of the
score_mod's learnable tensors included), which for rows longer than one tile first computes their logsumexp
in one more pass over the keys; when the logsumexp itself is asked for (sinks), the forward computes it the
same way. So on CPU flex can only speed up the forward (inference). On a GPU the same class runs,
but flex's own backward would be the better choice there (not wired).

Compilation: one compiled ``flex_attention`` for the process; torch.compile specialises it per variant and
shape (the first one costs ~20 s, later ones a few seconds) and keeps them all (the recompile limit is raised
for these calls, so a sweep over lengths never falls back to the uncompiled, dense flex). Block masks are
cached per (Tq, Tk, causal, window). Without a C++ compiler, ``compiled_flex`` raises a one-line error.

Flex cannot run float64 (gradcheck), fewer queries than keys (KV-cache decoding, where one query row is cheap
anyway) or a non-CPU / non-CUDA device (``runs_on``): there the dispatch table chooses the chunked softmax (same
mathematics, no compilation), and ``flex_softmax`` (for direct callers) does the same.

Sinks (``attend_with_sinks``): gpt-oss's per-head sink logits ℓ and learned sink key/value pairs (σ_k, σ_v)
are merged exactly with the logsumexp L of the real keys: with S = logsumexp of the sink scores and
Z = logaddexp(L, S), out = e^{L−Z}·out_flex + e^{S−Z}·softmax(sink scores)·σ_v (σ_v = 0 for logits).
"""

from __future__ import annotations

import functools
import os
import shutil
from typing import Any

import torch
from torch import Tensor

from attnlab.attention.fast.chunked import (
    Options,
    Problem,
    SoftmaxRule,
    check_shapes,
    chunked_attention,
    make_options,
)
from attnlab.types import ScoreMod

RECOMPILE_LIMIT = 512  # variants × lengths × dtypes compiled in one process (default 8 would fall back to eager)
_COMPILED: Any = None


def compiler_available() -> bool:
    """True if a C++ compiler for torch.compile's CPU code is on PATH."""
    candidates = [os.environ.get("CXX", ""), "g++", "c++", "clang++"]
    return any(c and shutil.which(c) for c in candidates)


def compiled_flex() -> Any:
    """The process-wide ``torch.compile(flex_attention)``; a clear error if it cannot be built."""
    global _COMPILED
    if _COMPILED is None:
        try:
            from torch.nn.attention.flex_attention import flex_attention
        except ImportError as err:  # pragma: no cover - torch 2.13 has it
            raise RuntimeError(f"backend='flex' needs torch.nn.attention.flex_attention: {err}") from None
        if not compiler_available():
            raise RuntimeError(
                "backend='flex' needs torch.compile, which needs a C++ compiler (none of $CXX, g++, c++, clang++ "
                "found): install one or use backend='chunked'"
            )
        _COMPILED = torch.compile(flex_attention, dynamic=False)
    return _COMPILED


def flex_score_mod(score_mod: ScoreMod | None, softcap: float | None) -> ScoreMod | None:
    """score_mod followed by soft-capping c·tanh(s / c): one pointwise function for flex."""
    if score_mod is None and softcap is None:
        return None

    def modified(score: Tensor, b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        if score_mod is not None:
            score = score_mod(score, b, h, q_idx, kv_idx)
        if softcap is not None:
            score = torch.tanh(score / softcap) * softcap
        return score

    return modified


def _mask_mod(causal: bool, window: int | None, documents: Tensor | None) -> Any:
    """Flex's mask_mod for causal ∧ window ∧ same document (Tq = Tk), or None when every key is visible."""
    if not causal and window is None and documents is None:
        return None

    def visible(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        ok = q_idx >= kv_idx if causal else torch.ones_like(q_idx, dtype=torch.bool)
        if window is not None:
            ok = ok & ((q_idx - kv_idx < window) if causal else ((q_idx - kv_idx).abs() < window))
        if documents is not None:
            ok = ok & (documents[b, q_idx] == documents[b, kv_idx])
        return ok

    return visible


@functools.lru_cache(maxsize=64)
def _cached_block_mask(t_q: int, t_k: int, causal: bool, window: int | None, device: str) -> Any:
    from torch.nn.attention.flex_attention import create_block_mask

    mask_mod = _mask_mod(causal, window, None)
    if mask_mod is None:
        return None
    return create_block_mask(mask_mod, None, None, t_q, t_k, device=device)


def tensor_mask_mod(mask: Tensor) -> Any:
    """Flex's mask_mod reading a boolean [B|1, H|1, Tq, Tk] tensor (a caller's mask, the layer's rule folded in)."""
    by_batch, by_head = int(mask.shape[0] > 1), int(mask.shape[1] > 1)

    def visible(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        return mask[b * by_batch, h * by_head, q_idx, kv_idx]

    return visible


def block_mask(
    t_q: int,
    t_k: int,
    causal: bool,
    window: int | None,
    documents: Tensor | None,
    device: str,
    mask: Tensor | None = None,
) -> Any:
    """The BlockMask of a call: cached for causal / window masks, rebuilt for document ids and a caller's mask
    (they are data; flex skips the tiles the BlockMask marks hidden)."""
    if mask is not None:
        from torch.nn.attention.flex_attention import create_block_mask

        b, h = (n if n > 1 else None for n in mask.shape[:2])
        return create_block_mask(tensor_mask_mod(mask), b, h, t_q, t_k, device=device)
    if documents is None:
        return _cached_block_mask(t_q, t_k, causal, window, device)
    from torch.nn.attention.flex_attention import create_block_mask

    return create_block_mask(_mask_mod(causal, window, documents), documents.shape[0], None, t_q, t_k, device=device)


class FlexSoftmax(torch.autograd.Function):
    """(out, lse) with out from compiled flex; lse (when asked) and the backward from the chunked softmax."""

    @staticmethod
    def forward(
        ctx: Any, opts: Options, softcap: float | None, need_lse: bool, q: Tensor, k: Tensor, v: Tensor, *params
    ):
        mask = block_mask(q.shape[2], k.shape[2], opts.causal, opts.window, opts.documents, q.device.type, opts.mask)
        flex = compiled_flex()
        qc, kc, vc = (t.detach().contiguous() for t in (q, k, v))  # flex refuses CPU inputs that require grad
        with torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT):
            out = flex(
                qc,
                kc,
                vc,
                score_mod=flex_score_mod(opts.score_mod, softcap),
                block_mask=mask,
                scale=opts.scale,
                enable_gqa=q.shape[1] != k.shape[1],
            )
        rule = SoftmaxRule(softcap=softcap)
        lse = rule.row_lse(Problem(q, k, v, opts, tuple(params))) if need_lse else out.new_zeros(0)
        if not need_lse:
            ctx.mark_non_differentiable(lse)
        ctx.opts, ctx.rule, ctx.has_lse = opts, rule, need_lse
        ctx.save_for_backward(q, k, v, out, lse, *params)
        return out, lse

    @staticmethod
    def backward(ctx: Any, d_out: Tensor, d_lse: Tensor):
        q, k, v, out, lse, *params = ctx.saved_tensors
        pb = Problem(q, k, v, ctx.opts, tuple(params))
        if not ctx.has_lse:  # rows that fit one tile need no logsumexp; longer ones compute theirs
            lse, d_lse = None, None
        pb.start_backward()
        d_lse = None if d_lse is None else d_lse.to(pb.dtype)
        ctx.rule.backward(pb, d_out.to(pb.dtype), out.to(pb.dtype), (lse,), d_lse)
        d_params = [None if g is None else g.to(p.dtype) for g, p in zip(pb.dparams, params, strict=True)]
        return None, None, None, pb.dq.to(q.dtype), pb.dk.to(k.dtype), pb.dv.to(v.dtype), *d_params


def flex_runs(q: Tensor, k: Tensor) -> bool:
    """Whether compiled flex handles this call (the dispatch table asks ``runs_on`` with the call's traits)."""
    return runs_on(q.dtype, q.shape[2], k.shape[2], q.device.type)


def runs_on(dtype: torch.dtype, t_q: int, t_k: int, device: str) -> bool:
    """Compiled flex runs half and single precision, Tq = Tk (no KV-cache decoding), on CPU and CUDA."""
    return dtype != torch.float64 and t_q == t_k and device in ("cpu", "cuda")


def flex_softmax(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    score_mod: ScoreMod | None = None,
    causal: bool = True,
    scale: float | None = None,
    window: int | None = None,
    softcap: float | None = None,
    documents: Tensor | None = None,
    need_lse: bool = False,
) -> tuple[Tensor, Tensor]:
    """(out [B, H, Tq, Dv], lse [B, H, Tq] or empty) of softmax attention: compiled FlexAttention where it runs the
    call (``flex_runs``), else the chunked softmax (same mathematics, no compilation). For direct callers (sinks,
    the speed benchmark); a layer's flex path calls ``compiled_flex_softmax``, chosen only where flex runs.

    ``documents`` [B, T]: integer document ids (packed sequences); a query sees only keys of its own document.
    ``need_lse``: also return the row logsumexp (one more pass over the keys on CPU). Differentiable in q, k,
    v, the lse and the score_mod's learnable tensors.
    """
    kwargs = dict(score_mod=score_mod, causal=causal, scale=scale, window=window, documents=documents)
    if flex_runs(q, k):
        return compiled_flex_softmax(q, k, v, softcap=softcap, need_lse=need_lse, **kwargs)
    check_shapes(q, k, v, causal)
    if softcap is not None and softcap <= 0:
        raise ValueError(f"softcap={softcap} must be > 0")
    return chunked_attention(q, k, v, SoftmaxRule(softcap=softcap), need_lse=need_lse, **kwargs)


def compiled_flex_softmax(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    score_mod: ScoreMod | None = None,
    causal: bool = True,
    scale: float | None = None,
    window: int | None = None,
    softcap: float | None = None,
    documents: Tensor | None = None,
    need_lse: bool = False,
    mask: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """``flex_softmax`` through compiled FlexAttention only; a call flex does not run (``flex_runs``) is an error.
    ``mask``: boolean [B|1, H|1, Tq, Tk], the causal / window rule folded in, as a mask_mod and its BlockMask."""
    check_shapes(q, k, v, causal)
    if softcap is not None and softcap <= 0:
        raise ValueError(f"softcap={softcap} must be > 0")
    if not flex_runs(q, k):
        raise ValueError(
            f"compiled flex does not run {q.dtype} with Tq={q.shape[2]}, Tk={k.shape[2]} on {q.device.type} "
            "(allowed: float32 / bf16 / fp16, Tq = Tk, cpu or cuda)"
        )
    opts, params = make_options(
        SoftmaxRule(softcap=softcap),
        q,
        k,
        v,
        score_mod=score_mod,
        causal=causal,
        scale=scale,
        window=window,
        documents=documents,
        mask=mask,
    )
    return FlexSoftmax.apply(opts, softcap, need_lse, q, k, v, *params)


def attend_with_sinks(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    sink_logits: Tensor | None = None,
    sink_keys: Tensor | None = None,
    sink_values: Tensor | None = None,
    score_mod: ScoreMod | None = None,
    causal: bool = True,
    scale: float | None = None,
    window: int | None = None,
    softcap: float | None = None,
) -> tuple[Tensor, Tensor]:
    """Softmax attention over [sinks ⧺ keys] (``heads="sinks"``), the keys through flex: (out, sink mass).

    ``sink_logits`` [H, n]: gpt-oss's learned logits (values 0); or ``sink_keys`` [Hkv, n, D] and
    ``sink_values`` [Hkv, n, Dv]: learned key/value pairs scored against each query. Sinks carry no position
    (no score_mod) and are visible to every query. Returns out [B, H, Tq, Dv] and the sink mass [B, H, Tq].
    """
    if (sink_logits is None) == (sink_keys is None) or (sink_keys is None) != (sink_values is None):
        raise ValueError("give either sink_logits, or sink_keys and sink_values")
    out, lse = flex_softmax(
        q, k, v, score_mod=score_mod, causal=causal, scale=scale, window=window, softcap=softcap, need_lse=True
    )
    dtype = lse.dtype
    b, h, t_q, _ = q.shape
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    if sink_logits is not None:
        sink_scores = sink_logits.to(dtype)[None, :, None, :].expand(b, h, t_q, sink_logits.shape[-1])
    else:
        rep = h // sink_keys.shape[0]  # type: ignore[union-attr]
        keys = sink_keys.to(dtype).repeat_interleave(rep, dim=0)  # type: ignore[union-attr]
        sink_scores = (q.to(dtype) * scale) @ keys.transpose(-1, -2)[None]  # [B, H, Tq, n]
    if softcap is not None:
        sink_scores = torch.tanh(sink_scores / softcap) * softcap
    sink_lse = sink_scores.logsumexp(-1)  # [B, H, Tq]
    total = torch.logaddexp(lse, sink_lse)
    merged = out.to(dtype) * (lse - total).exp()[..., None]
    if sink_values is not None:
        values = sink_values.to(dtype).repeat_interleave(h // sink_values.shape[0], dim=0)  # [H, n, Dv]
        merged = merged + (sink_scores - total[..., None]).exp() @ values[None]
    return merged.to(v.dtype), (sink_lse - total).exp()
