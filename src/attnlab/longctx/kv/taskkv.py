"""Task-KV (He, Liu, Chen, "Task-KV: Task-aware KV Cache Optimization via Semantic Differentiation of Attention
Heads", arXiv:2501.15113): heads whose output lies far from the layer's mean head output ("heterogeneous heads")
keep their whole cache; the others keep attention sinks, a recent window and "middle activations", the middle
tokens they attend to most.

Our reading of the method, per layer, after the prompt:

- each key/value head's semantic vector is its mean attention output over the observation window (the last
  ``window`` queries, averaged over the group's query heads), and the semantic centre is the mean of the layer's
  vectors; a head's distance is the Euclidean distance to the centre;
- the layer's budget ``n_kv_heads · B`` pays for the ``k`` farthest heads at full length n, the largest k that
  leaves every other head at least ``n_sink + n_recent`` tokens, and the rest share what is left equally;
- a non-heterogeneous head keeps ``n_sink`` sinks, the ``n_recent`` newest tokens and, in the middle, the tokens of
  largest SnapKV score (the window's attention, pooled).

Heads of a layer therefore keep different numbers of tokens: the cache stores them ragged (``cache.py``). A one-off
compression after the prompt, as in the paper.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from pydantic import Field
from torch import Tensor

from attnlab.longctx.kv.base import HeadState, KVPolicy, keep_top


class TaskKVPolicy(KVPolicy):
    """Full caches for the heads farthest from the layer's mean head, sinks + recent + middle for the others."""

    name: ClassVar[str] = "taskkv"
    needs: ClassVar[frozenset[str]] = frozenset({"window", "head_out"})
    while_decoding: ClassVar[bool] = False

    window: int = Field(32, ge=1)
    kernel: int = Field(5, ge=1)
    n_sink: int = Field(4, ge=0)
    n_recent: int = Field(32, ge=0)

    def head_budgets(self, state: HeadState, budget: Tensor) -> Tensor:
        """[B, Hkv]: each head's budget: the full length for the heterogeneous heads, an equal share for the rest."""
        n = state.n_valid[..., 0]  # [B, Hkv]
        h = n.shape[1]
        total = int(budget.sum())
        length = int(n.max())
        if total >= h * length:
            return n
        floor = min(self.n_sink + self.n_recent, total // h)
        k = 0
        while k + 1 < h and total - (k + 1) * length >= (h - k - 1) * floor:
            k += 1
        out = torch.full_like(n, (total - k * length) // (h - k))
        if k:
            z = state.head_out  # [B, Hkv, dv]
            if z is None:
                raise ValueError("Task-KV needs the window's head outputs (stat 'head_out')")
            distance = (z - z.mean(1, keepdim=True)).norm(dim=-1)  # [B, Hkv]
            far = torch.topk(distance, k, dim=-1).indices
            out.scatter_(1, far, length)
        return torch.minimum(out, n)

    def select(self, layer: int, state: HeadState, budget: Tensor) -> Tensor:
        per_head = self.head_budgets(state, budget)[..., None]  # [B, Hkv, 1]
        sinks = state.valid & (state.age < torch.clamp(per_head, max=self.n_sink))
        recent = state.valid & (state.recency < torch.clamp(per_head - self.n_sink, min=0, max=self.n_recent))
        return keep_top(state.stats["window"], state.valid, per_head[..., 0], sinks | recent)
