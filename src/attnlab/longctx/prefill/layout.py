"""The common representation of a sparse prefill pattern, and its dense reference.

Every pattern here produces a ``BlockLayout`` (``attnlab.attention.fast.block_sparse``): for each head and each query
block of ``block`` rows, the earlier key blocks it computes and the single earlier key columns outside them; the
diagonal block (causal inside) is always computed. That is the shape MInference's kernels take (Jiang et al. 2024,
arXiv:2407.02490, microsoft/MInference: ``block_count`` / ``block_offset`` and ``column_count`` / ``column_index``
per query block of 64 in ``minference/ops/pit_sparse_flash_attention_v2.py``), with key blocks aligned to the
block grid.

The reference of a layout is its boolean mask (``layout_mask``) and a masked softmax in any float dtype
(``reference_attention``): the specification each fast path is tested against.
"""

from __future__ import annotations

import torch
from torch import Tensor

from attnlab.attention.fast.block_sparse import BlockLayout, layout_mask

__all__ = [
    "BlockLayout",
    "causal_tiles",
    "from_tiles",
    "layout_mask",
    "reference_attention",
    "select_heads",
]


def n_blocks(t: int, block: int) -> int:
    return -(-t // block)


def causal_tiles(heads: int, t: int, block: int, device: torch.device | None = None) -> Tensor:
    """[H, nq, nq] boolean: every causal tile (key block ≤ query block)."""
    nq = n_blocks(t, block)
    return torch.ones(nq, nq, dtype=torch.bool, device=device).tril().expand(heads, nq, nq).clone()


def from_tiles(tiles: Tensor, t: int, block: int, columns: Tensor | None = None) -> BlockLayout:
    """A layout from [H, nq, nq] boolean tiles (key block j computed for query block i); the diagonal is always
    computed and tiles above it are ignored. ``columns`` [H, nq, nc] (−1 for none) must lie outside the tiles."""
    h, nq, _ = tiles.shape
    below = tiles & torch.ones(nq, nq, dtype=torch.bool, device=tiles.device).tril(-1)
    width = int(below.sum(-1).max()) if below.numel() else 0
    ids = torch.arange(nq, device=tiles.device).expand_as(below)
    ranked = torch.where(below, ids, -1).sort(-1, descending=True).values[..., :width]
    cols = columns if columns is not None else torch.full((h, nq, 0), -1, dtype=torch.long, device=tiles.device)
    return BlockLayout(t=t, block=block, blocks=ranked.contiguous(), columns=cols.long().contiguous())


def select_heads(layouts: list[BlockLayout], choice: Tensor) -> BlockLayout:
    """Head h of the result is head h of ``layouts[choice[h]]`` (one pattern per head, as MInference's search
    assigns them); the id lists are padded with −1 to a common width."""
    first = layouts[0]

    def padded(name: str) -> list[Tensor]:
        tensors = [getattr(lay, name) for lay in layouts]
        width = max(x.shape[-1] for x in tensors)
        return [torch.nn.functional.pad(x, (0, width - x.shape[-1]), value=-1) for x in tensors]

    picks = choice.long().tolist()
    blocks, columns = padded("blocks"), padded("columns")
    return BlockLayout(
        t=first.t,
        block=first.block,
        blocks=torch.stack([blocks[c][h] for h, c in enumerate(picks)]),
        columns=torch.stack([columns[c][h] for h, c in enumerate(picks)]),
    )


def reference_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor, scale: float | None = None) -> Tensor:
    """softmax(q kᵀ · scale, hidden where ``mask`` [H, T, T] is False) v for q [H, T, D], k, v [Hkv, T, D] (GQA),
    in the inputs' dtype (float64 for exact comparisons)."""
    rep = q.shape[0] // k.shape[0]
    k, v = k.repeat_interleave(rep, 0), v.repeat_interleave(rep, 0)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    s = (q @ k.transpose(-1, -2)) * scale
    return torch.softmax(s.masked_fill(~mask, float("-inf")), -1) @ v
