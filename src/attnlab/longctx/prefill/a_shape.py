"""A-shape: the first tokens (attention sinks) and a local window, the same for every query block.

MInference's "A-shape" head (Jiang et al. 2024, arXiv:2407.02490, §3; ``stream_llm`` in microsoft/MInference
``minference/modules/minference_forward.py``: ``mask[:, :vertical_size] = 1`` plus a band of ``slash_size``
diagonals) is StreamingLLM's static pattern (Xiao et al. 2024, arXiv:2309.17453) used for prefill. Nothing is
estimated from q or k. Here in blocks: ``sink`` key blocks from the start and ``local`` key blocks before each
query block's diagonal block.
"""

from __future__ import annotations

import torch

from attnlab.longctx.prefill.layout import BlockLayout, from_tiles, n_blocks


def a_shape_layout(
    heads: int, t: int, block: int, sink: int, local: int, device: torch.device | None = None
) -> BlockLayout:
    """Key blocks 0 … sink − 1 and i − local … i − 1 for query block i (the diagonal i always), every head."""
    if sink < 0 or local < 0:
        raise ValueError(f"sink and local are block counts >= 0; got {sink}, {local}")
    nq = n_blocks(t, block)
    i = torch.arange(nq, device=device)[:, None]
    j = torch.arange(nq, device=device)[None, :]
    tiles = ((j < sink) | (j >= i - local)) & (j <= i)
    return from_tiles(tiles.expand(heads, nq, nq), t, block)
