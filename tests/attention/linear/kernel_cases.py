"""Shared set-up for the kernel-attention tests: float64 normalisers with lively parameters, and one runner
for every backend (prepare, then the backend's attend, exactly as the Attention module calls them).

A plain module, not a conftest: the suite's other tests import the top-level ``conftest`` by name.
"""

from __future__ import annotations

from typing import Any

import torch

from attnlab.attention import NORMALISERS, AttentionSite
from attnlab.attention.core import AttnOutput

SITE = AttentionSite(d_model=16, n_heads=2, seq_len=16)  # d_head = 8

# Small, band-exercising arguments: Based's window and Hedgehog's feature dim below T.
ARGS: dict[str, dict[str, Any]] = {
    "linear_elu": {},
    "hedgehog": {"feature_dim": 4},
    "based": {"feature_dim": 4, "window": 3},
    "lightning": {},
    "retnet": {},
    "kernel_rpe_fft": {"n_features": 8, "max_len": 16},
}


def make_kernel(name: str, site: AttentionSite = SITE, **overrides: Any) -> torch.nn.Module:
    """``make_kernel("based", chunk_size=5)``: a float64 normaliser whose parameters are all perturbed.

    Default inits are symmetric (Hedgehog's two maps are copies, the RPE starts at 0); perturbing them makes
    a wrong index or a transposed map show up in every comparison.
    """
    entry = NORMALISERS.entry(name)
    normaliser = entry.factory(entry.params.model_validate({**ARGS[name], **overrides}), site).double()
    with torch.no_grad():
        for p in normaliser.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return normaliser


def run(normaliser: torch.nn.Module, backend: str, q, k, v, causal: bool = True) -> AttnOutput:
    """The AttnOutput of ``backend`` (reference, recurrent, chunked, fft) on raw q, k, v."""
    pq, pk, scale = normaliser.prepare(q, k, None)
    attend = normaliser.attend if backend == "reference" else getattr(normaliser, f"attend_{backend}")
    return attend(pq, pk, v, normaliser=normaliser, score_mod=None, causal=causal, scale=scale, window=None)


def qkv(t_q: int = 13, t_k: int = 13, requires_grad: bool = False) -> tuple[torch.Tensor, ...]:
    """float64 q [2, 2, Tq, 8], k [2, 2, Tk, 8], v [2, 2, Tk, 5]."""
    q = torch.randn(2, 2, t_q, 8, dtype=torch.float64)
    k = torch.randn(2, 2, t_k, 8, dtype=torch.float64)
    v = torch.randn(2, 2, t_k, 5, dtype=torch.float64)
    return tuple(t.requires_grad_(requires_grad) for t in (q, k, v))
