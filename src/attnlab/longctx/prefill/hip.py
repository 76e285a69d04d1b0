"""HiP: hierarchically pruned top-k key blocks per query block, in O(T log T) estimation time.

HiP attention (Lee et al. 2024, "A Training-Free Sub-quadratic Cost Transformer Model Serving Framework With
Hierarchically Pruned Attention", arXiv:2406.09827; DeepAuto-AI/hip-attention, ``masking_iteration_draft_numba_kernel``
in ``src/hip_attn/v1_1/attention2_draft.py``) finds each query block's top-k keys without scoring them all: the
candidate keys are split evenly into k branches; each iteration splits every branch in two, scores each half by its
*first* key block only (the max of q·k over the block's queries and that representative's keys), and keeps the k
best halves; after log₂(branch size) iterations every branch is one key block. Per query block that is O(k log T)
scored representatives, so the whole mask costs O(T log T).

Here a branch is a run of key blocks; the representative is the first ``rep_keys`` keys of its first block (HiP's
draft scores a block of ``block_size_k`` keys; a few keys keep the estimate cheap) against every other query of the
block (the draft's ``q[1::2]``). Key blocks 0 … sink − 1 and the ``local`` blocks before the diagonal are always
computed (HiP's sink tokens and sliding window), and the search runs over the blocks between them.
"""

from __future__ import annotations

import torch
from torch import Tensor

from attnlab.longctx.prefill.layout import BlockLayout, from_tiles, n_blocks


def hip_layout(
    q: Tensor, k: Tensor, k_blocks: int, block: int, *, sink: int = 1, local: int = 1, rep_keys: int = 4
) -> BlockLayout:
    """Per query block: ``sink`` first blocks, ``local`` blocks before the diagonal, and ``k_blocks`` blocks between
    them chosen by HiP's hierarchical pruning (all of them when there are no more than ``k_blocks``)."""
    if k_blocks < 1 or sink < 0 or local < 0 or rep_keys < 1:
        raise ValueError(
            f"need k_blocks >= 1, sink, local >= 0, rep_keys >= 1; got {k_blocks}, {sink}, {local}, {rep_keys}"
        )
    h, t, d = q.shape
    rep = h // k.shape[0]
    nq = n_blocks(t, block)
    device = q.device
    i = torch.arange(nq, device=device)
    lo = torch.full((nq,), sink, device=device)
    hi = (i - local).clamp(min=0)  # candidates: blocks lo … hi − 1
    span = (hi - lo).clamp(min=0)  # [nq]
    # HiP's queries: every other row of each block (zero-padded rows past T score 0 and never win a max alone)
    qb = torch.nn.functional.pad(q.float(), (0, 0, 0, nq * block - t)).view(h, nq, block, d)[:, :, 1::2]
    kk = torch.nn.functional.pad(k.float(), (0, 0, 0, nq * block - t)).repeat_interleave(rep, 0)  # [H, Tp, D]
    # initial branches: k_blocks even splits of each row's span
    j = torch.arange(k_blocks + 1, device=device)
    edges = lo[:, None] + torch.div(span[:, None] * j[None, :], k_blocks, rounding_mode="floor")  # [nq, k + 1]
    start = edges[:, :-1].expand(h, nq, k_blocks).clone()
    size = (edges[:, 1:] - edges[:, :-1]).expand(h, nq, k_blocks).clone()
    offs = torch.arange(rep_keys, device=device)
    while bool((size > 1).any()):
        half = torch.div(size + 1, 2, rounding_mode="floor")
        c_start = torch.stack([start, start + half], -1).flatten(-2)  # [H, nq, 2k]
        c_size = torch.stack([half, size - half], -1).flatten(-2)
        keys = (c_start * block)[..., None] + offs  # representative key positions [H, nq, 2k, r]
        keys = keys.clamp(max=nq * block - 1)
        rk = kk.gather(1, keys.flatten(1)[..., None].expand(-1, -1, d)).view(h, nq, 2 * k_blocks * rep_keys, d)
        score = (qb @ rk.transpose(-1, -2)).amax(2).view(h, nq, 2 * k_blocks, rep_keys).amax(-1)
        score = score.masked_fill(c_size < 1, float("-inf"))
        best = score.topk(k_blocks, -1).indices
        start, size = c_start.gather(2, best), c_size.gather(2, best)
    tiles = torch.zeros(h, nq, nq + 1, dtype=torch.bool, device=device)
    chosen = torch.where(size >= 1, start, nq)
    tiles.scatter_(2, chosen, True)
    tiles = tiles[..., :nq]
    jj = i[None, :]
    tiles |= ((jj < sink) | (jj >= (i[:, None] - local))) & (jj <= i[:, None])
    return from_tiles(tiles, t, block)
