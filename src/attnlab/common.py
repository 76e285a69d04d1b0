"""Small shared pieces with no dependency on the attention package (positions import these)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

# (score, b, h, q_idx, kv_idx) -> score; the FlexAttention convention, written with broadcasting ops.
ScoreMod = Callable[[Tensor, Tensor, Tensor, Tensor, Tensor], Tensor]


def compute_dtype(x: Tensor) -> torch.dtype:
    """float64 stays float64; everything else is computed in float32 (softmax in bf16 loses rows)."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32
