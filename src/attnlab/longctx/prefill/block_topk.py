"""Block-sparse by top-k: each query block computes the k key blocks with the largest pooled score.

MInference's third head type (Jiang et al. 2024, arXiv:2407.02490, §3.2, Algorithm 3; ``_build_block_index`` in
microsoft/MInference ``minference/ops/block_sparse_flash_attention.py``): mean-pool q and k over blocks of 64,
score the pooled blocks q̄_i · k̄_j over the causal ones (j ≤ i), keep the top k per query block. The diagonal block
is always computed here (the kernel's causal boundary), whether or not it is among the k. With k ≥ the number of
query blocks every causal block is kept: dense attention.
"""

from __future__ import annotations

import torch
from torch import Tensor

from attnlab.longctx.prefill.layout import BlockLayout, from_tiles, n_blocks


def pooled(x: Tensor, block: int) -> Tensor:
    """[H, T, D] → [H, nb, D]: the mean over each block's real rows (the last block may be partial)."""
    h, t, d = x.shape
    nb = n_blocks(t, block)
    sums = torch.nn.functional.pad(x.float(), (0, 0, 0, nb * block - t)).view(h, nb, block, d).sum(2)
    counts = torch.full((nb,), float(block), device=x.device)
    counts[-1] = t - (nb - 1) * block
    return sums / counts[None, :, None]


def block_scores(q: Tensor, k: Tensor, block: int) -> Tensor:
    """[H, nq, nq]: q̄_i · k̄_j, −inf above the diagonal (key head h // (H / Hkv) for query head h)."""
    rep = q.shape[0] // k.shape[0]
    s = pooled(q, block) @ pooled(k, block).repeat_interleave(rep, 0).transpose(-1, -2)
    nq = s.shape[-1]
    return s.masked_fill(torch.ones(nq, nq, dtype=torch.bool, device=s.device).triu(1), float("-inf"))


def block_topk(q: Tensor, k: Tensor, k_blocks: int, block: int) -> BlockLayout:
    """The top ``k_blocks`` causal key blocks per query block, by pooled score, plus the diagonal."""
    if k_blocks < 1:
        raise ValueError(f"k_blocks must be at least 1; got {k_blocks}")
    s = block_scores(q, k, block)
    h, nq, _ = s.shape
    top = s.topk(min(k_blocks, nq), -1).indices
    tiles = torch.zeros(h, nq, nq, dtype=torch.bool, device=s.device).scatter_(2, top, True)
    tiles &= torch.isfinite(s)  # a row with fewer causal blocks than k picked some −inf ones
    return from_tiles(tiles, q.shape[1], block)
