"""Bounds for the tests' float comparisons, from the dtype's unit roundoff and the size of the computation.

Why: a bound read off one machine's result fails on another CPU, whose kernels sum in another order (the vector
width ATen's kernels use, set by ``ATEN_CPU_CAPABILITY``; MKL's blocking; the split across threads). A bound that
follows from the arithmetic holds for every order.

The arithmetic (Higham, *Accuracy and Stability of Numerical Algorithms*, 2nd ed., SIAM 2002, §2.2 and Lemma 3.1;
§3.1 for sums and dot products in any order, blocked and pairwise orders included):

- every float operation is exact up to a factor (1 + δ), |δ| ≤ u, the unit roundoff: 2⁻²⁴ for float32, 2⁻⁸ for
  bfloat16, 2⁻⁵³ for float64;
- a sum or dot product of n terms, in any order, is off by at most γ_n · Σ|terms|, γ_n = n·u / (1 − n·u);
- two evaluations of the same expression that differ only in their order are each within that of the exact
  value, so they differ by at most twice that;
- a chain of ``depth`` such steps, each mapping a relative error in its inputs to at most ``condition`` times that
  in its outputs (relative to the tensors' scale, max |x|), accumulates at most depth · condition · γ_n (to first
  order in u).

So ``order_bound`` bounds max |a − b| / max |b| for two evaluations of the same computation. ``condition`` is 1 for
the well-conditioned steps of attention (matmuls, softmax and l1 rows of bounded scores, norms of rows far from
zero); where a test's computation amplifies errors (exp of large scores, x^p near 0, a norm of a cancelling sum)
the caller says by how much and why. These are worst-case bounds: the typical error grows like √n · u, not n · u
(Higham & Mary, "A New Approach to Probabilistic Rounding Error Analysis", SIAM J. Sci. Comput. 41(5), 2019), so a
test whose error approaches its bound is a real finding, not noise.
"""

from __future__ import annotations

import torch

UNIT_ROUNDOFF = {torch.float64: 2.0**-53, torch.float32: 2.0**-24, torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}


def unit_roundoff(dtype: torch.dtype) -> float:
    """u of ``dtype``: the largest relative error of one rounding (half the machine epsilon)."""
    return UNIT_ROUNDOFF[dtype]


def gamma(n: int, dtype: torch.dtype) -> float:
    """γ_n = n·u / (1 − n·u): the relative error bound of a sum or dot product of n terms, in any order."""
    nu = n * unit_roundoff(dtype)
    assert nu < 1, f"n·u = {nu}: {n} terms exceed what {dtype} can bound"
    return nu / (1 - nu)


def order_bound(dtype: torch.dtype, n_terms: int, depth: int = 1, condition: float = 1.0) -> float:
    """max |a − b| / max |b| for two evaluations of one computation that differ only in summation order:
    2 (both sides) · depth (chained accumulations) · condition (their amplification) · γ_{n_terms}.

    ``n_terms`` is the longest sum in the chain (a dot product's length, the keys a softmax row sums over).
    """
    return 2 * depth * condition * gamma(n_terms, dtype)


# ``make_lm``'s model (tests/conftest.py): d_model 32, MLP width 4·32 = 128 (its longest sum), ≤ 16 positions.
LM_TERMS = 128


def lm_depth(n_layers: int) -> int:
    """Chained accumulations from tokens to logits in ``make_lm``'s model: 8 per layer (norm, q/k/v projection,
    scores, the normaliser's row sum, weights · v, output projection, MLP in, MLP out), then the final norm and
    the unembedding."""
    return 8 * n_layers + 2


# RetNet's rows are signed (R = QKᵀ ⊙ D̃, not a distribution) and its per-head RMSNorm divides by the norm of
# Σ_j R_ij v_j, a sum that can cancel: the rounding of the sum is amplified by Σ_j |R_ij| ‖v_j‖ / ‖Σ_j R_ij v_j‖.
# That ratio depends on the draw. On make_lm's models the other normalisers' differences sit near 1% of lm_atol and
# RetNet's ~50× higher, so its step counts with condition 100 (lm_atol × 12 for two layers).
RETNET_CONDITION = 100.0


def scale_of(expected: torch.Tensor) -> float:
    """max |e|: the scale the relative bounds refer to."""
    return expected.double().abs().max().item()


def lm_atol(expected: torch.Tensor, n_layers: int = 2, condition: float = 1.0) -> float:
    """Absolute bound on two evaluations of ``make_lm``'s logits that differ in summation order (a full pass
    against decoding with the cache, one backend against another): ``order_bound`` in the logits' dtype over the
    model's chain, times the logits' scale. ``condition``: how much the normaliser's step (one per layer)
    amplifies its input's relative error, so the chain counts lm_depth + n_layers · (condition − 1) steps."""
    depth = lm_depth(n_layers) + round(n_layers * (condition - 1))
    return order_bound(expected.dtype, LM_TERMS, depth) * scale_of(expected)


def dtype_on(device: str) -> torch.dtype:
    """The dtype a cross-device comparison runs in on ``device``: float64, or float32 on MPS (which has no float64);
    skips the test, saying what is present, when ``device`` is not on this machine."""
    import pytest

    from attnlab.train.device import devices_present

    if device not in devices_present():
        pytest.skip(f"no {device} device on this machine (present: {', '.join(devices_present())})")
    return torch.float32 if device == "mps" else torch.float64
