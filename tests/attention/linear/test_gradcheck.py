"""The quadratic references (output norm included) have correct gradients w.r.t. q, k, v and every parameter."""

from __future__ import annotations

import pytest
import torch
from kernel_cases import make_kernel, run
from torch import nn
from torch.func import functional_call

from attnlab.attention import AttentionSite

TINY = AttentionSite(d_model=8, n_heads=2, seq_len=8)  # d_head = 4
NAMES = ["linear_elu", "hedgehog", "based", "lightning", "retnet", "kernel_rpe_fft"]


class Reference(nn.Module):
    """prepare + attend as one module, so ``functional_call`` can swap in the parameters gradcheck perturbs."""

    def __init__(self, normaliser: nn.Module, causal: bool):
        super().__init__()
        self.normaliser, self.causal = normaliser, causal

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return run(self.normaliser, "reference", q, k, v, self.causal).out


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "non-causal"])
@pytest.mark.parametrize("name", NAMES)
def test_reference_gradients_match_finite_differences(name: str, causal: bool) -> None:
    normaliser = make_kernel(name, site=TINY, **({"max_len": 8} if name == "kernel_rpe_fft" else {}))
    module = Reference(normaliser, causal)
    names = [n for n, _ in module.named_parameters()]
    params = [p.detach().clone().requires_grad_(True) for p in module.parameters()]
    q, k, v = (torch.randn(1, 2, 5, 4, dtype=torch.float64, requires_grad=True) for _ in range(3))

    def reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *params: torch.Tensor) -> torch.Tensor:
        return functional_call(module, dict(zip(names, params, strict=True)), (q, k, v))

    assert torch.autograd.gradcheck(reference, (q, k, v, *params))
