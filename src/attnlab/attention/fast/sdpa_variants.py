"""Softmax-family variants through PyTorch's own fused SDPA kernel, by exact reformulation: one file per form.

On CPU, torch's ``scaled_dot_product_attention`` has a fused flash kernel with its own backward; FlexAttention has
none there. Each variant is rewritten as SDPA calls on augmented inputs, so that forward and backward run in the
fused kernel and every gradient (q, k, v, sink logits / vectors, the T5 table) is exact:

- ``sdpa_flash``: the CPU flash op pair on augmented inputs, sinks merged by log-sum-exp (the engine);
- ``sdpa_augmented``: ALiBi's bias columns and sink keys for one call (shared by the two forms below);
- ``sdpa_alibi`` (``alibi_sdpa``): ALiBi as two (four) leading columns, exact in floating point;
- ``sdpa_sinks`` (``sinks_sdpa``): gpt-oss sink logits or learned sink key/value pairs, with the sink mass;
- ``sdpa_relative`` (``relative_bias_sdpa``): a learned relative bias (T5) as a Toeplitz mask, with the table's
  gradient; ``sdpa_band``: its banded form for Tq = Tk without a window (O(T) memory);
- ``sdpa_documents`` (``document_sdpa``): document masks, one SDPA call per run length.

Soft-capping c·tanh(s/c) is not expressible: SDPA applies no function to the scores. Which form computes a layer is
decided by the dispatch table (``attnlab.attention.dispatch``: paths ``sdpa_alibi`` and ``sdpa_relative``), from
the position's typed bias (``PositionEncoding.score_bias()``); ``softmax_sdpa`` below runs the form of a given bias.

Refused with ``ValueError``: inputs that are not [B, H, T, D], query heads not a multiple of key heads, causal
attention with Tq > Tk, document ids that are not contiguous runs, a relative bias on a non-CPU device.
"""

from __future__ import annotations

from torch import Tensor

from attnlab.attention.fast.sdpa_alibi import alibi_sdpa
from attnlab.attention.fast.sdpa_documents import document_runs, document_sdpa
from attnlab.attention.fast.sdpa_flash import check_inputs, flushing_denormals, fused_sdpa
from attnlab.attention.fast.sdpa_relative import relative_bias_sdpa
from attnlab.attention.fast.sdpa_sinks import sinks_sdpa
from attnlab.types import AlibiBias, PositionBias

__all__ = [
    "alibi_sdpa",
    "document_runs",
    "document_sdpa",
    "flushing_denormals",
    "relative_bias_sdpa",
    "sinks_sdpa",
    "softmax_sdpa",
]


def softmax_sdpa(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    bias: PositionBias | None = None,
    causal: bool = True,
    scale: float | None = None,
    window: int | None = None,
) -> Tensor:
    """Softmax attention with a position's typed bias (``AlibiBias`` or ``RelativeBias``; None: none) through SDPA.

    The relative bias runs on CPU only (``relative_bias_sdpa`` raises elsewhere).
    """
    if bias is None:
        check_inputs(q, k, v, causal)
        scaled = q * (q.shape[-1] ** -0.5 if scale is None else scale)
        return fused_sdpa(scaled, k, v, n_sinks=0, causal=causal, window=window, attn_mask=None)
    if isinstance(bias, AlibiBias):
        return alibi_sdpa(q, k, v, bias.slopes, symmetric=bias.symmetric, causal=causal, scale=scale, window=window)
    return relative_bias_sdpa(q, k, v, bias.table, bias.bucket, causal=causal, scale=scale, window=window)
