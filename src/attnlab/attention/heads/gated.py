"""Gated attention (Bondarenko, Nagel, Blankevoort, "Quantizable Transformers: Removing Outliers by
Helping Attention Heads Do Nothing", NeurIPS 2023, arXiv:2306.12929).

    o_h = σ(G_h(x_h)) ⊙ (attention output of head h)

x_h is the h-th d_head slice of the block's input hidden state at the query position, so each head can
switch itself off per token without pushing its softmax to extremes. ``gate="linear"`` is the authors'
OPT form (per-head Linear(d_head, 1), bias initialised to logit(``gate_init``) = logit(0.25));
``gate="mlp"`` their BERT form (per-head Linear(d_head, d_head/4) → ReLU → Linear(·, 1)).
Source followed: Qualcomm-AI-research/outlier-free-transformers. Works with any normaliser and with GQA.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from attnlab.attention.heads.base import HEADS, MultiHead, check_kv_heads

if TYPE_CHECKING:
    from attnlab.attention.config import AttentionSite


class GatedParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    gate: Literal["linear", "mlp"] = "linear"
    gate_init: float = Field(0.25, gt=0, lt=1)
    n_kv_heads: int | None = Field(None, gt=0)

    def check_site(self, site: AttentionSite, field: str) -> None:
        check_kv_heads(self.n_kv_heads, site, field)


class GatedMultiHead(MultiHead):
    def __init__(self, d_model: int, n_heads: int, n_kv_heads: int, gate: str, gate_init: float):
        super().__init__(d_model, n_heads, n_kv_heads)
        d, h = self.d_head, n_heads
        init_bias = math.log(gate_init / (1 - gate_init))
        # Per-head weights as batched tensors: head h maps its slice x_h [d] to one gate logit.
        if gate == "linear":
            self.w1 = nn.Parameter(torch.randn(h, d, 1) * d**-0.5)
            self.b1 = nn.Parameter(torch.full((h, 1), init_bias))
            self.w2 = self.b2 = None
        else:
            hidden = max(1, d // 4)
            self.w1 = nn.Parameter(torch.randn(h, d, hidden) * d**-0.5)
            self.b1 = nn.Parameter(torch.zeros(h, hidden))
            self.w2 = nn.Parameter(torch.randn(h, hidden, 1) * hidden**-0.5)
            self.b2 = nn.Parameter(torch.full((h, 1), init_bias))

    def gate_logits(self, x: Tensor) -> Tensor:
        """x [B, T, D] → gate logits [B, H, T, 1]."""
        b, t, _ = x.shape
        xh = x.view(b, t, self.n_heads, self.d_head).transpose(1, 2)  # [B, H, T, d]
        g = torch.einsum("bhtd,hde->bhte", xh, self.w1) + self.b1[None, :, None, :]
        if self.w2 is not None:
            g = torch.einsum("bhte,hef->bhtf", g.relu(), self.w2) + self.b2[None, :, None, :]
        return g

    def combine(self, z: Tensor, x: Tensor) -> Tensor:
        return super().combine(self.gate_logits(x).sigmoid().to(z.dtype) * z, x)


@HEADS.register(
    "gated",
    summary="multi-head attention with a per-head, per-token sigmoid output gate",
    paper="Bondarenko et al. 2023, arXiv:2306.12929",
    params=GatedParams,
)
def build_gated(params: GatedParams, site: AttentionSite) -> GatedMultiHead:
    return GatedMultiHead(site.d_model, site.n_heads, params.n_kv_heads or site.n_heads, params.gate, params.gate_init)
