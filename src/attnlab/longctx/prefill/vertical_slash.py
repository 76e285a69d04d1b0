"""Vertical-slash: a few key columns seen by every query, and a few diagonals (fixed offsets i − j), per head.

MInference (Jiang et al. 2024, arXiv:2407.02490, §3.2, Algorithm 2) estimates both online from the *last* queries:
with the last ``last_q`` = 64 queries, Â = softmax(q_last kᵀ · scale) (causal among them); the vertical score of key
j is Σ_rows Â[:, j], the slash score of offset o is Σ of Â along the diagonal i − j = o; the top ``n_vertical``
columns and the top ``n_slash`` offsets are kept. The authors' code forces the first 30 columns and the 100 nearest
diagonals into the choice and keeps at least 30 columns and 50 diagonals (``vertical_and_slash_kernel`` in
microsoft/MInference ``minference/modules/minference_forward.py``); so does ``estimate`` here, except that with
fewer than 100 diagonals it forces the nearest n_slash (the authors' top-k then picks among 100 tied ones).

The layout: a diagonal o crosses query block i in the keys i·block − o … i·block + block − 1 − o, i.e. in one or two
aligned key blocks, which are computed whole; columns outside those blocks (and before the query block) are single
keys. MInference's index conversion (``csrc/vertical_slash_index.cu``) covers a diagonal with 64-key windows that
start on it instead; aligned blocks compute at most twice the keys per diagonal and need no per-row offsets. The
layout's mask therefore contains every chosen line (``lines_mask``), and the kernel computes exactly that mask.
"""

from __future__ import annotations

import torch
from torch import Tensor

from attnlab.longctx.prefill.layout import BlockLayout, from_tiles, n_blocks

LAST_Q = 64  # queries the indices are estimated from (MInference's last_q)
FORCED_COLUMNS = 30  # the first keys, always among the columns
FORCED_DIAGONALS = 100  # the nearest offsets, always among the diagonals
MIN_COLUMNS, MIN_DIAGONALS = 30, 50


def last_query_weights(q: Tensor, k: Tensor, scale: float, last_q: int = LAST_Q) -> Tensor:
    """[H, n, T] float32: softmax of the last n = min(last_q, T) queries' scores over all keys (causal among them)."""
    h, t, d = q.shape
    n = min(last_q, t)
    hkv = k.shape[0]
    rows = q[:, t - n :].float().reshape(hkv, (h // hkv) * n, d)  # a key head's query heads, stacked
    s = (rows @ k.float().transpose(-1, -2)).view(h, n, t) * scale  # [H, n, T]
    pos = torch.arange(t - n, t, device=q.device)[:, None]
    s = s.masked_fill(torch.arange(t, device=q.device)[None, :] > pos, float("-inf"))
    return torch.softmax(s, -1)


def diagonal_sums(w: Tensor, t: int) -> Tensor:
    """[H, n, T] weights of the last n queries → [H, T]: entry o sums the weights at offset i − j = o."""
    h, n, _ = w.shape
    pos = torch.arange(t - n, t, device=w.device)[:, None]
    offset = (pos - torch.arange(t, device=w.device)[None, :]).clamp(min=0)  # hidden entries have weight 0
    out = torch.zeros(h, t, dtype=w.dtype, device=w.device)
    return out.scatter_add_(1, offset.flatten().expand(h, -1), w.reshape(h, -1))


def estimate(q: Tensor, k: Tensor, n_vertical: int, n_slash: int, scale: float) -> tuple[Tensor, Tensor]:
    """(columns [H, nv], offsets [H, ns]) from the last queries, as MInference's ``vertical_and_slash_kernel``."""
    t = q.shape[1]
    nv, ns = min(t, max(n_vertical, MIN_COLUMNS)), min(t, max(n_slash, MIN_DIAGONALS))
    w = last_query_weights(q, k, scale)
    vertical = w.sum(1)
    vertical[:, :FORCED_COLUMNS] = float("inf")
    slash = diagonal_sums(w, t)
    slash[:, : min(FORCED_DIAGONALS, ns)] = float("inf")
    return vertical.topk(nv, -1).indices, slash.topk(ns, -1).indices


def vertical_slash_layout(columns: Tensor, offsets: Tensor, t: int, block: int) -> BlockLayout:
    """The aligned key blocks each chosen diagonal crosses, and the chosen columns outside them (per head).

    Diagonal o crosses query block i in the key blocks ⌊(i·b − o)/b⌋ = i − ⌈o/b⌉ and ⌊(i·b + b − 1 − o)/b⌋ =
    i − ⌊o/b⌋: the same block distances δ for every query block, so the tiles are one Toeplitz pattern per head,
    tiles[i, j] = [i − j ∈ Δ_h], j ≥ 0 (no row offsets to compute per query block).
    """
    h = columns.shape[0]
    nq = n_blocks(t, block)
    device = columns.device
    near = torch.zeros(h, nq + 1, dtype=torch.bool, device=device)  # Δ_h; index nq: out of range
    for dist in (-torch.div(-offsets, block, rounding_mode="floor"), torch.div(offsets, block, rounding_mode="floor")):
        near.scatter_(1, dist.clamp(max=nq), True)
    i = torch.arange(nq, device=device)
    lag = (i[:, None] - i[None, :]).clamp(min=0)  # [nq, nq]
    tiles = near[:, :nq].gather(1, lag.flatten().expand(h, -1)).view(h, nq, nq) & (i[None, :] <= i[:, None])
    owner = torch.div(columns, block, rounding_mode="floor")  # [H, nv]
    gap = i[None, :, None] - owner[:, None, :]  # [H, nq, nv]: block distance of each column from block i
    keep = (columns[:, None, :] < i[None, :, None] * block) & ~near.gather(1, gap.clamp(0, nq).flatten(1)).view_as(gap)
    width = int(keep.sum(-1).max()) if keep.numel() else 0
    picked = torch.where(keep, columns[:, None, :], -1).sort(-1, descending=True).values[..., :width]
    return from_tiles(tiles, t, block, picked)


def lines_mask(columns: Tensor, offsets: Tensor, t: int) -> Tensor:
    """[H, T, T] boolean: the chosen columns and diagonals themselves, causal (what the layout must contain)."""
    h = columns.shape[0]
    i = torch.arange(t, device=columns.device)[:, None]
    j = torch.arange(t, device=columns.device)[None, :]
    col = torch.zeros(h, t, dtype=torch.bool, device=columns.device).scatter_(1, columns, True)
    diag = torch.zeros(h, t, dtype=torch.bool, device=columns.device).scatter_(1, offsets, True)
    return (col[:, None, :] | diag.gather(1, (i - j).clamp(min=0).flatten().expand(h, -1)).view(h, t, t)) & (j <= i)


def vertical_slash(q: Tensor, k: Tensor, n_vertical: int, n_slash: int, block: int, scale: float) -> BlockLayout:
    """Estimate the lines from q [H, T, D], k [Hkv, T, D] and build their layout."""
    columns, offsets = estimate(q, k, n_vertical, n_slash, scale)
    return vertical_slash_layout(columns, offsets, q.shape[1], block)
