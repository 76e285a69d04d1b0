"""Sigmoid attention's tile algebra (Ramapuram et al. 2024, arXiv:2409.04431; FlashSigmoid, the authors' kernel:
apple/ml-sigmoid-attention): w = σ(s + b) on visible keys, no row normaliser, so no row statistic either.

Forward: o_i = Σ_j w_ij v_j (one pass). Backward per tile: dv_j += Σ_i w_ij dO_i, ds_ij = σ′ · dw_ij with
σ′ = w (1 − w) and dw_ij = dO_i · v_j; dq, dk from ds as for any score (``attnlab.attention.fast.chunked``'s
``PointwiseRule``).
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def sigmoid_weights(s, vis, bias):
    """w = σ(s + b) on visible entries, exactly 0 elsewhere."""
    return tl.where(vis, tl.sigmoid(s + bias), 0.0)


@triton.jit
def sigmoid_grads(s, vis, dw, bias):
    """(w, ds) of a tile: the weights (for dv) and ∂L/∂s = w (1 − w) dw."""
    w = sigmoid_weights(s, vis, bias)
    return w, dw * w * (1.0 - w)
