"""Document masks (packed sequences) through PyTorch's SDPA, one call per run length.

Attention never crosses a document, so each contiguous run of one document id is its own SDPA call (runs of equal
length, from every batch row, in one batched call): the total work is at most that of one causal SDPA call.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import Tensor

from attnlab.attention.core import build_mask
from attnlab.attention.fast.sdpa_flash import check_inputs


def document_runs(documents: Tensor) -> list[list[tuple[int, int]]]:
    """Per batch row, the (start, end) of each run of one document id; refuses an id that appears in two runs."""
    if documents.dim() != 2:
        raise ValueError(f"documents must be [B, T] integer ids; got {tuple(documents.shape)}")
    runs: list[list[tuple[int, int]]] = []
    for row in documents.cpu():
        change = (row[1:] != row[:-1]).nonzero().flatten() + 1
        bounds = [0, *change.tolist(), row.shape[0]]
        ids = [int(row[s]) for s in bounds[:-1]]
        if len(set(ids)) != len(ids):
            raise ValueError("document ids must form contiguous runs (an id appears in two separate runs)")
        runs.append(list(itertools.pairwise(bounds)))
    return runs


def document_sdpa(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    documents: Tensor,
    *,
    causal: bool = True,
    scale: float | None = None,
    window: int | None = None,
) -> Tensor:
    """Softmax attention where a query sees only keys of its own document, via SDPA per document run.

    ``documents`` [B, T]: integer ids in contiguous runs (packed sequences). Exact: the mask is block diagonal,
    so each run is an independent attention of its own (causal / windowed within the run, positions relative
    to the run's start — the same mask); runs of equal length, from all batch rows, go in one batched call.
    Needs Tq = Tk (no KV cache).
    """
    check_inputs(q, k, v, causal)
    b, _, t, _ = q.shape
    if k.shape[2] != t or documents.shape != (b, t):
        raise ValueError(f"documents need Tq = Tk and ids [B, T] = {(b, t)}; got {tuple(documents.shape)}")
    runs = document_runs(documents)
    by_length: dict[int, list[tuple[int, int]]] = {}
    for row, row_runs in enumerate(runs):
        for start, end in row_runs:
            by_length.setdefault(end - start, []).append((row, start))
    gqa = q.shape[1] != k.shape[1]
    pieces: dict[tuple[int, int], Tensor] = {}
    for length, members in by_length.items():
        qs, ks, vs = (torch.cat([x[r : r + 1, :, s : s + length] for r, s in members]) for x in (q, k, v))
        if window is None:
            out = F.scaled_dot_product_attention(qs, ks, vs, is_causal=causal, scale=scale, enable_gqa=gqa)
        else:
            mask = build_mask(length, length, q.device, causal, window)
            out = F.scaled_dot_product_attention(qs, ks, vs, attn_mask=mask, scale=scale, enable_gqa=gqa)
        for n, key in enumerate(members):
            pieces[key] = out[n : n + 1]
    rows = [torch.cat([pieces[(r, s)] for s, _ in row_runs], dim=2) for r, row_runs in enumerate(runs)]
    return torch.cat(rows, dim=0)
