"""Analytic gradients equal finite differences (``torch.autograd.gradcheck``, float64) for every normaliser.

Cog (sign(s) jumps at s = 0) and clipped softmax (clip at 0 and 1) are only piecewise smooth. Random
float64 scores land within gradcheck's step (1e-6) of a kink with negligible probability, and the seeds are
fixed, so these checks are deterministic; a failure here is a wrong gradient, not bad luck.
"""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call

from attnlab.attention import NORMALISERS, AttentionConfig, AttentionSite, attend_reference, build_attention
from conftest import require_supported, score_normalisers

SITE = AttentionSite(d_model=8, n_heads=2, seq_len=5)  # d_head = 4


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
@pytest.mark.parametrize("name", score_normalisers())
def test_attend_reference_gradients_match_finite_differences(name: str, causal: bool) -> None:
    entry = NORMALISERS.entry(name)
    normaliser = entry.factory(entry.params(), SITE)
    q, k, v = (torch.randn(2, 2, 5, 4, dtype=torch.float64, requires_grad=True) for _ in range(3))

    def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        q, k, scale = normaliser.prepare(q, k, None)
        return attend_reference(q, k, v, normaliser=normaliser, causal=causal, scale=scale).out

    assert torch.autograd.gradcheck(attend, (q, k, v))


@pytest.mark.parametrize("position", ["rope", "alibi"])
@pytest.mark.parametrize("name", NORMALISERS.names())
def test_attention_module_gradients_match_finite_differences(name: str, position: str) -> None:
    """Gradients w.r.t. the input and every parameter of a whole Attention module."""
    require_supported(normaliser=name, position=position)
    module = build_attention(AttentionConfig(normaliser=name, position=position), SITE).double()
    names = [n for n, _ in module.named_parameters()]
    params = [p.detach().clone().requires_grad_(True) for p in module.parameters()]
    x = torch.randn(1, 5, 8, dtype=torch.float64, requires_grad=True)

    def forward(x: torch.Tensor, *params: torch.Tensor) -> torch.Tensor:
        return functional_call(module, dict(zip(names, params, strict=True)), (x,))

    assert torch.autograd.gradcheck(forward, (x, *params))
