"""The attention statistics a policy selects by, computed inside the cache from the rotated q and k.

The cache measures them itself instead of reading the layer's ``hook_pattern``: the layer then keeps its fused path
(SDPA), and a 16k-token prompt never materialises its [H, T, T] pattern (the sums run over query blocks).
Weights are the layer's softmax, ``softmax(q kᵀ · scale)`` with the causal mask and the cache's invalid slots
hidden, in ``compute_dtype`` (float32, or float64 for a float64 model).

- ``acc`` [B, Hkv, S] (H2O): Σ over the call's queries and the group's query heads of A[i, j], float64;
- ``window`` [B, Hkv, S] (SnapKV, PyramidKV, Task-KV): Σ over the last ``window`` queries, average-pooled over
  ``kernel`` neighbouring keys, averaged over the group;
- ``head_out`` [B, Hkv, dv] (Task-KV): the window's attention output, averaged over its queries and the group;
- ``last`` [B, Hkv, S] (TOVA, Recycled): the newest query's weights, averaged over the group.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from attnlab.types import compute_dtype

BLOCK_ELEMENTS = 1 << 24  # weights held at once when summing over every query (64 MiB of float32)


def group_weights(q: Tensor, k: Tensor, valid: Tensor, scale: float, first_slot: int) -> Tensor:
    """[B, Hkv, G, Tq, S]: softmax attention of q [B, Hq, Tq, d] (query i at slot ``first_slot + i``) over k."""
    b, h_q, t_q, d = q.shape
    h_kv, s = k.shape[1], k.shape[2]
    dtype = compute_dtype(q)
    scores = (q.to(dtype) * scale).reshape(b, h_kv, h_q // h_kv, t_q, d) @ k.to(dtype)[:, :, None].transpose(-1, -2)
    slots = torch.arange(s, device=q.device)
    causal = slots[None, :] <= (first_slot + torch.arange(t_q, device=q.device))[:, None]  # [Tq, S]
    visible = valid[:, :, None, None, :] & causal
    return scores.masked_fill(~visible, float("-inf")).softmax(-1)


def accumulated(q: Tensor, k: Tensor, valid: Tensor, scale: float) -> Tensor:
    """``acc`` of one call: the column sums of every query's weights, per key/value head (float64)."""
    b, h_q, t_q, _ = q.shape
    s = k.shape[2]
    block = max(1, BLOCK_ELEMENTS // max(1, b * h_q * s))
    total = torch.zeros(b, k.shape[1], s, dtype=torch.float64, device=q.device)
    for start in range(0, t_q, block):
        seen = s - t_q + min(start + block, t_q)  # the causal mask hides every key past the block's last query
        w = group_weights(q[:, :, start : start + block], k[:, :, :seen], valid[..., :seen], scale, s - t_q + start)
        total[..., :seen] += w.sum((2, 3)).to(torch.float64)
    return total


def window_scores(weights: Tensor, kernel: int) -> Tensor:
    """``window`` from the window's weights [B, Hkv, G, W, S]: summed, pooled over ``kernel`` keys, group mean."""
    b, h_kv, g, _, s = weights.shape
    summed = weights.sum(3).reshape(b * h_kv * g, 1, s)
    pooled = F.avg_pool1d(summed, kernel_size=kernel, stride=1, padding=kernel // 2)[..., :s]
    return pooled.reshape(b, h_kv, g, s).mean(2)


def measure(
    needs: frozenset[str], q: Tensor, k: Tensor, v: Tensor, valid: Tensor, scale: float, window: int, kernel: int
) -> dict[str, Tensor]:
    """The statistics ``needs`` of one forward call: q [B, Hq, T, d] the call's rotated queries, k, v every key."""
    out: dict[str, Tensor] = {}
    t, s = q.shape[2], k.shape[2]
    if "acc" in needs:
        out["acc"] = accumulated(q, k, valid, scale)
    if needs & {"window", "head_out"}:
        w = min(window, t)
        weights = group_weights(q[:, :, t - w :], k, valid, scale, s - w)
        out["window"] = window_scores(weights, kernel)
        if "head_out" in needs:
            z = weights @ v.to(weights.dtype)[:, :, None]  # [B, Hkv, G, W, dv]
            out["head_out"] = z.mean((2, 3))
    if "last" in needs:
        out["last"] = group_weights(q[:, :, t - 1 :], k, valid, scale, s - 1).mean(2)[:, :, 0]
    return out
