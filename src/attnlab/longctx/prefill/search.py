"""MInference's offline per-head pattern search: which head type serves each head best at a given budget.

MInference (Jiang et al. 2024, arXiv:2407.02490, §3.2 "Kernel-Aware Optimal Sparse Pattern Search", Algorithm 1;
``search_pattern`` in microsoft/MInference ``minference/modules/minference_forward.py``) runs the model once on a
calibration sample, and for every head compares its three head types — A-shape, vertical-slash, block-sparse — at
settings of about the same cost, by the *recall* of the head's dense attention: the attention mass that falls inside
the pattern's mask, averaged over the later query rows (the authors' code: rows from 2500 on). Each head keeps the
type with the highest recall; at inference its indices are estimated online (vertical-slash, block top-k) as usual.

Here the candidates are the three ``PatternSpec`` s at one key budget (so at comparable cost; the table reports the
density each computes), and the recall is averaged over the second half of the calibration rows.
"""

from __future__ import annotations

import torch
from torch import Tensor

from attnlab.longctx.prefill.layout import BlockLayout, layout_mask
from attnlab.longctx.prefill.patterns import SEARCHED, PatternSpec

ROW_CHUNK = 512  # query rows of dense weights held at once


def recall(q: Tensor, k: Tensor, layout: BlockLayout, scale: float, rows_from: int) -> Tensor:
    """[H]: Σ_j∈mask softmax(q kᵀ · scale)_ij, averaged over the rows i ≥ ``rows_from`` (causal dense weights)."""
    h, t, _ = q.shape
    rep = h // k.shape[0]
    kk = k.float().repeat_interleave(rep, 0)
    mask = layout_mask(layout)
    total = torch.zeros(h, dtype=torch.float64, device=q.device)
    for r0 in range(rows_from, t, ROW_CHUNK):
        r1 = min(t, r0 + ROW_CHUNK)
        s = (q[:, r0:r1].float() @ kk.transpose(-1, -2)) * scale
        rows = torch.arange(r0, r1, device=q.device)[:, None]
        s = s.masked_fill(torch.arange(t, device=q.device)[None, :] > rows, float("-inf"))
        w = torch.softmax(s, -1)
        total += (w * mask[:, r0:r1]).sum((1, 2)).double()
    return total / (t - rows_from)


def search_layer(q: Tensor, k: Tensor, keys: int, block: int, scale: float) -> tuple[tuple[int, ...], Tensor]:
    """(per head the index into ``SEARCHED`` with the highest recall, recalls [len(SEARCHED), H]) on one layer's
    calibration q [H, T, D], k [Hkv, T, D]."""
    recalls = []
    for name in SEARCHED:
        layout = PatternSpec(name, keys, block).build(q, k, scale)
        assert layout is not None
        recalls.append(recall(q, k, layout, scale, q.shape[1] // 2))
    table = torch.stack(recalls)
    return tuple(int(c) for c in table.argmax(0)), table
