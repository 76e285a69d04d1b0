"""Kernel attention without the T×T matrix: decayed prefix sums as a token loop and as a chunked scan.

Every mechanism of this package computes, for feature-mapped queries φq and keys φk and a per-head decay
slope s_h ≥ 0 (λ_h = exp(−s_h); s = 0 is no decay),

    sums_i = Σ_{j ≤ i} λ_h^{i−j} (φq_i · φk_j) v_j                               (causal)

and reads numerator and denominator from it by appending a column of ones to v. Queries are the last Tq of
the Tk positions (decoding with a KV cache), as in ``attnlab.attention.core``.

- ``recurrent_sums``: the RNN view, S_t = λ S_{t−1} + φk_t v_tᵀ, out_t = φq_t S_t; O(F·E) state.
- ``chunked_sums``: Lightning-2 / chunkwise-retention tiling: quadratic inside a chunk of C positions, a
  carried state between chunks; exponents stay block-local (λ^{r+1}, λ^{C−1−r}), so nothing overflows.
- ``global_sums``: the non-causal undecayed form, φq (Σ_j φk_j v_jᵀ); any Tq, Tk (cross-attention).
- ``bidirectional_sums``: non-causal with decay λ^{|i−j|} = causal scan + reversed causal scan − diagonal.

The pure helpers ``decay_matrix`` and ``decay_row_sums`` give the same decay for the quadratic references.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

Scan = Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]


def query_positions(t_q: int, t_k: int, device: torch.device | None = None) -> Tensor:
    """Absolute positions of the queries: the last ``t_q`` of ``t_k``."""
    return torch.arange(t_k - t_q, t_k, device=device)


def decay_matrix(t_q: int, t_k: int, slopes: Tensor, causal: bool) -> Tensor:
    """D [H, Tq, Tk] with D_ij = exp(−s_h·|i − j|); zero for future keys when causal."""
    i = query_positions(t_q, t_k, slopes.device)[:, None]
    j = torch.arange(t_k, device=slopes.device)[None, :]
    distance = (i - j).abs().to(slopes.dtype)
    d = torch.exp(-slopes[:, None, None] * distance)
    return d.masked_fill(j > i, 0.0) if causal else d


def decay_row_sums(t_q: int, t_k: int, slopes: Tensor, causal: bool) -> Tensor:
    """Σ_j D_ij in closed form, [H, Tq, 1]: Σ_{u=0}^{n−1} λ^u = (1 − λ^n)/(1 − λ), and n when λ = 1."""
    i = query_positions(t_q, t_k, slopes.device).to(slopes.dtype)[None, :]
    s = slopes[:, None]

    def geometric(n: Tensor) -> Tensor:  # Σ_{u=0}^{n−1} exp(−s·u)
        safe = torch.where(s > 0, s, torch.ones_like(s))
        return torch.where(s > 0, torch.expm1(-safe * n) / torch.expm1(-safe), n)

    sums = geometric(i + 1)  # keys 0 … i
    if not causal:
        sums = sums + geometric(t_k - i) - 1.0  # keys i … Tk−1, minus the diagonal counted twice
    return sums[..., None]


def _decay(slopes: Tensor, like: Tensor) -> Tensor:
    return slopes.to(like.dtype).view(1, -1, 1, 1)  # [1, H, 1, 1]


def recurrent_sums(q: Tensor, k: Tensor, v: Tensor, slopes: Tensor) -> Tensor:
    """Causal decayed sums token by token. q [B,H,Tq,F], k [B,H,Tk,F], v [B,H,Tk,E] → [B,H,Tq,E]."""
    t_q, t_k = q.shape[2], k.shape[2]
    lam = torch.exp(-_decay(slopes, v))
    state = q.new_zeros(q.shape[0], q.shape[1], q.shape[-1], v.shape[-1])  # S [B, H, F, E]
    outs = []
    for t in range(t_k):
        state = lam * state + k[:, :, t, :, None] * v[:, :, t, None, :]
        if t >= t_k - t_q:
            outs.append((q[:, :, t - (t_k - t_q), None, :] @ state).squeeze(2))  # [B, H, E]
    return torch.stack(outs, dim=2)


def chunked_sums(q: Tensor, k: Tensor, v: Tensor, slopes: Tensor, chunk: int) -> Tensor:
    """Causal decayed sums in chunks of ``chunk`` positions: O(T·C) intermediate memory, exact."""
    t_q, t_k = q.shape[2], k.shape[2]
    prefix = t_k - t_q
    s = _decay(slopes, v)  # [1, H, 1, 1]
    # State after the cached prefix: S = Σ_{j<P} λ^{P−1−j} φk_j v_jᵀ.
    age = torch.arange(prefix - 1, -1, -1, device=v.device, dtype=v.dtype).view(1, 1, -1, 1)
    state = (k[:, :, :prefix] * torch.exp(-s * age)).transpose(-1, -2) @ v[:, :, :prefix]  # [B, H, F, E]
    outs = []
    for a in range(0, t_q, chunk):
        keys = slice(prefix + a, prefix + a + chunk)
        qc, kc, vc = q[:, :, a : a + chunk], k[:, :, keys], v[:, :, keys]
        c = qc.shape[2]
        r = torch.arange(c, device=v.device, dtype=v.dtype)
        gap = r[:, None] - r[None, :]  # [c, c]
        local = torch.exp(-s * gap.clamp(min=0)).masked_fill(gap < 0, 0.0)  # [1, H, c, c]
        intra = ((qc @ kc.transpose(-1, -2)) * local) @ vc
        inter = (qc @ state) * torch.exp(-s * (r + 1).view(1, 1, c, 1))
        outs.append(intra + inter)
        state = torch.exp(-s * c) * state + (kc * torch.exp(-s * (c - 1 - r).view(1, 1, c, 1))).transpose(-1, -2) @ vc
    return torch.cat(outs, dim=2)


def global_sums(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Non-causal, undecayed: φq (Σ_j φk_j v_jᵀ) for every query; Tq and Tk are free."""
    return q @ (k.transpose(-1, -2) @ v)  # [B,H,Tq,F] @ [B,H,F,E]


def bidirectional_sums(q: Tensor, k: Tensor, v: Tensor, slopes: Tensor, scan: Scan) -> Tensor:
    """Non-causal with decay λ^{|i−j|}: a causal scan, a scan over the reversed sequence, minus the diagonal."""
    if q.shape[2] != k.shape[2]:
        raise ValueError(
            f"non-causal decayed attention needs as many queries as keys; got Tq={q.shape[2]}, Tk={k.shape[2]}"
        )
    forward = scan(q, k, v, slopes)
    backward = scan(q.flip(2), k.flip(2), v.flip(2), slopes).flip(2)
    diagonal = (q * k).sum(-1, keepdim=True) * v
    return forward + backward - diagonal
