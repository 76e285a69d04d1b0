"""LSSA and LSSAR's tile algebra (Gao & Spratling 2025, arXiv:2501.13428; forms as in
``attnlab.attention.normalisers.softplus``): softplus of length-scaled (cosine) scores, l1-normalised per row.

Per row i with N_i visible keys and c_i = log(d)·log(N_i) (1 without length scaling):

- LSSA: u = softplus(c s), U = Σ_j u + ε, w = u / U; one forward pass saves U. Backward: dv += wᵀ dO and
  ds = σ(c s)·c·(dw − D) / U with D_i = dO_i · o_i (``chunked.SoftplusRule``).
- LSSAR: a first pass for U, then x = N·u/U − O (O = 0 on rows with N ≤ ``free_rows``, else 1), r = ReLU(x)^p,
  R = Σ_j r + ε, w = r / R; U and R are saved. Backward: y = ReLU(x)^(p−1)·(dw − D) (0 where x ≤ 0), a row pass
  for S = Σ_j N·A·y / N (N·A = ReLU(x) + O wherever y ≠ 0), then ds = σ(c s)·(y − S)·p·c·N / (R·U)
  (``chunked.ReweightedSoftplusRule``, whose docstring derives it).

x ≤ N − O, so r = xᵖ overflows float32 once N^p > 3.4e38 (N ≳ 370 keys at p = 15; float16 already at N ≈ 3)
where a row is peaked. The kernels therefore work in units of the row's largest x (found in the forward's
first pass from the largest u, and saved): r' = (x / x_max)ᵖ ≤ 1, R' = Σ r' + ε / x_maxᵖ, and in the backward
y' = (x / x_max)^(p−1)·(dw − D), S' = Σ_j (x + O)·y' / N and ds = σ(c s)·(y' − S')·p·c·N / (x_max·R'·U): the same
numbers as the formulas above, without intermediate overflow.
"""

from __future__ import annotations

import triton
import triton.language as tl

from attnlab.attention.fast.triton.common import power, softplus


@triton.jit
def row_terms(n, log_d, free_rows, LENGTH_SCALE: tl.constexpr):
    """(c, O) per row from the visible counts N [M]: the score multiplier and LSSAR's offset."""
    if LENGTH_SCALE:  # noqa: SIM108 (a constexpr branch, resolved when the kernel compiles)
        c = log_d * tl.log(n)
    else:
        c = n * 0.0 + 1.0
    return c, tl.where(n > free_rows, 1.0, 0.0)


@triton.jit
def lssa_terms(s, vis, c):
    """(u, σ(c s)) of a tile, both 0 where hidden."""
    x = c[:, None] * s
    return tl.where(vis, softplus(x), 0.0), tl.where(vis, tl.sigmoid(x), 0.0)


@triton.jit
def lssa_grads(s, vis, dw, c, u_den, dd):
    """(w, ds) of an LSSA tile from U = ``u_den`` and D = ``dd`` ([M] each)."""
    u, sig = lssa_terms(s, vis, c)
    w = u / u_den[:, None]
    return w, sig * (c / u_den)[:, None] * (dw - dd[:, None])


@triton.jit
def lssar_excess(s, vis, c, n, u_den, offset):
    """x⁺ = ReLU(N·u/U − O) of a tile (0 where hidden, as u = 0 and O ≥ 0)."""
    u = tl.where(vis, softplus(c[:, None] * s), 0.0)
    return tl.maximum(u * (n / u_den)[:, None] - offset[:, None], 0.0)


@triton.jit
def lssar_weights(s, vis, c, n, u_den, offset, x_max, p, P_INT: tl.constexpr):
    """r / x_maxᵖ = (x⁺ / x_max)ᵖ ≤ 1 of a tile (not yet divided by the row sum)."""
    return power(lssar_excess(s, vis, c, n, u_den, offset) / x_max[:, None], p, P_INT)


@triton.jit
def lssar_grads(
    s, vis, dw, c, n, u_den, r_den, x_max, offset, dd, s_sum, p, P_INT: tl.constexpr, P1_INT: tl.constexpr
):  # fmt: skip
    """(w, ds, S-terms) of an LSSAR tile in units of the row's x_max (``r_den`` = R / x_maxᵖ, ``s_sum`` =
    S / x_max^(p−1)); the S-terms, summed over j by the row pass, ignore ``s_sum``."""
    pos = lssar_excess(s, vis, c, n, u_den, offset)
    xi = pos / x_max[:, None]
    w = power(xi, p, P_INT) / r_den[:, None]
    y = tl.where(xi > 0, power(xi, p - 1.0, P1_INT), 0.0) * (dw - dd[:, None])
    sig = tl.where(vis, tl.sigmoid(c[:, None] * s), 0.0)
    factor = p * c * n / (x_max * r_den * u_den)
    ds = sig * (y - s_sum[:, None]) * factor[:, None]
    return w, ds, (pos + offset[:, None]) * y / n[:, None]
