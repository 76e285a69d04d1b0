"""The one attention computation every mechanism is checked against.

``attend_reference`` is dense and readable: scores → optional ``score_mod`` (position bias) → a
normaliser → weights @ values. It runs in float64 when given float64 and upcasts half precision to
float32 for the scores and the normaliser. Every fast path in attnlab is tested against it.

Layout at every attention boundary: ``[B, H, T, D]``. When there are fewer queries than keys
(incremental decoding with a KV cache) the queries are the *last* ``Tq`` positions, so with
``causal=True`` query ``i`` sees keys ``j <= i + (Tk - Tq)``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from attnlab.types import AttnOutput, Normaliser, ScoreMod, compute_dtype, repeat_kv

__all__ = ["AttnOutput", "Normaliser", "ScoreMod", "attend_reference", "compute_dtype", "repeat_kv"]


def causal_mask(t_q: int, t_k: int, device: torch.device | None = None, window: int | None = None) -> Tensor:
    """Boolean [Tq, Tk], True where key j is visible to query i (queries aligned to the last keys).

    With ``window`` w, query i sees only keys i − w < j ≤ i (sliding-window attention).
    """
    offset = t_k - t_q
    q_idx = torch.arange(t_q, device=device)[:, None] + offset
    k_idx = torch.arange(t_k, device=device)[None, :]
    visible = k_idx <= q_idx
    if window is not None:
        visible &= k_idx > q_idx - window
    return visible


def build_mask(t_q: int, t_k: int, device: torch.device, causal: bool, window: int | None) -> Tensor | None:
    """The visibility mask of a (causal and/or windowed) attention, or None for full attention."""
    if causal:
        return causal_mask(t_q, t_k, device, window)
    if window is not None:  # non-causal window: |i − j| < w
        offset = t_k - t_q
        q_idx = torch.arange(t_q, device=device)[:, None] + offset
        k_idx = torch.arange(t_k, device=device)[None, :]
        return (q_idx - k_idx).abs() < window
    return None


def normalise(normaliser: Normaliser, scores: Tensor, mask: Tensor | None) -> Tensor:
    """``normaliser(scores, mask)``, where a row that sees no key gets weights 0: it is normalised as if it saw every
    key (finite: softmax of an all −inf row is NaN, in forward and backward) and then zeroed. Only a caller's mask
    ([B|1, H|1, Tq, Tk], ``attnlab.attention.masks``) can hide a whole row; the causal / window rule never does."""
    if mask is None or mask.dim() < 4:
        return normaliser(scores, mask)
    empty = ~mask.any(-1, keepdim=True)
    if not bool(empty.any()):
        return normaliser(scores, mask)
    return normaliser(scores, mask | empty).masked_fill(empty, 0.0)


def visible_counts(mask: Tensor | None, t_k: int, like: Tensor) -> Tensor:
    """Number of keys each query sees, shaped to broadcast against scores [..., Tq, 1]."""
    if mask is None:
        return torch.full((1, 1), float(t_k), dtype=like.dtype, device=like.device)
    return mask.sum(-1, keepdim=True).to(like.dtype)


def index_grids(b: int, h: int, t_q: int, t_k: int, device: torch.device) -> tuple[Tensor, ...]:
    """Broadcastable (b, h, q_idx, kv_idx) index tensors for a score_mod over [B, H, Tq, Tk]."""
    offset = t_k - t_q
    return (
        torch.arange(b, device=device).view(b, 1, 1, 1),
        torch.arange(h, device=device).view(1, h, 1, 1),
        (torch.arange(t_q, device=device) + offset).view(1, 1, t_q, 1),
        torch.arange(t_k, device=device).view(1, 1, 1, t_k),
    )


def apply_score_mod(scores: Tensor, score_mod: ScoreMod) -> Tensor:
    b, h, t_q, t_k = scores.shape
    return score_mod(scores, *index_grids(b, h, t_q, t_k, scores.device))


def check_qkv(q: Tensor, k: Tensor, v: Tensor, causal: bool, same_kv_heads: bool = False) -> None:
    """The shape contract of every attention path, as one-line errors: [B, H, T, D] tensors, query heads a
    multiple of key/value heads (``same_kv_heads``: and as many value heads as key heads), Tq ≤ Tk when causal."""
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"q, k, v must be [B, H, T, D]; got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if q.shape[1] % k.shape[1] != 0 or (same_kv_heads and k.shape[1] != v.shape[1]):
        raise ValueError(f"query heads ({q.shape[1]}) must be a multiple of key/value heads ({k.shape[1]})")
    if causal and q.shape[2] > k.shape[2]:
        raise ValueError(f"causal attention needs Tq <= Tk; got Tq={q.shape[2]}, Tk={k.shape[2]}")


def attend_reference(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    normaliser: Normaliser,
    score_mod: ScoreMod | None = None,
    causal: bool = True,
    scale: float | None = None,
    window: int | None = None,
    keep_scores: bool = True,
    mask: Tensor | None = None,
) -> AttnOutput:
    """Dense attention: ``out = normaliser(score_mod(q kᵀ · scale), mask) @ v``.

    ``window``: sliding-window attention (each query sees the last ``window`` keys, itself included).
    ``keep_scores=False``: the returned scores are None (the output and weights are unchanged); the masked copy
    of the scores is one more [B, H, Tq, Tk] pass that only a hook on ``hook_attn_scores`` reads.
    ``mask``: boolean [B|1, H|1, Tq, Tk], True where a key is visible, used instead of the causal / window rule
    (``attnlab.attention.masks.layer_mask`` builds it with the rule folded in). A row that sees no key has output
    and weights 0 and scores −inf (its normaliser runs over every key and is then dropped: no NaN).

    q: [B, Hq, Tq, D]; k: [B, Hkv, Tk, D]; v: [B, Hkv, Tk, Dv] with Hq a multiple of Hkv (GQA / MQA).
    """
    check_qkv(q, k, v, causal)
    n_q_heads, n_kv_heads = q.shape[1], k.shape[1]
    k = repeat_kv(k, n_q_heads // n_kv_heads)
    v = repeat_kv(v, n_q_heads // n_kv_heads)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    dtype = compute_dtype(q)
    scores = (q.to(dtype) * scale) @ k.to(dtype).transpose(-1, -2)  # [B, H, Tq, Tk]
    if score_mod is not None:
        scores = apply_score_mod(scores, score_mod)
    if mask is None:
        mask = build_mask(q.shape[2], k.shape[2], q.device, causal, window)
    weights = normalise(normaliser, scores, mask)
    out = (weights @ v.to(dtype)).to(v.dtype)  # [B, H, Tq, Dv]
    if not keep_scores:
        return AttnOutput(out, None, weights)
    shown = scores if mask is None else scores.masked_fill(~mask, float("-inf"))
    return AttnOutput(out, shown, weights)
