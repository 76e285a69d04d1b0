"""LPA: Low-dimensional Projected Attention (Lv, Ding, Zhang, Hua, Cui, Zhou, "Scalable Efficient Training of
Large Language Models with Low-dimensional Projected Attention", EMNLP 2024, arXiv:2411.02063).

Every attention projection is a product of two linear maps through a rank-r space, with no nonlinearity:

    q = (x A_q) B_q,  k = (x A_k) B_k,  v = (x A_v) B_v       A_*: D → r,  B_*: r → H·d_h
    out = (z A_o) B_o                                          A_o: H·d_h → r,  B_o: r → D

so attention costs 4·r·(D + H·d_h) weights instead of 4·D·H·d_h. The paper keeps the FFN full-rank (a
low-rank FFN hurts). With r = D and B = I, LPA is MHA with weights A.

Source followed: TsinghuaC3I/LPA ``architecture/lpa_setting2.py`` (the LLaMA-style setting: RoPE, no biases);
setting 1's bias on the first factor is not implemented. Parameter names: ``q_down`` (A_q), ``q_up`` (B_q),
… and ``o_down`` (A_o), ``o_proj`` (B_o) — the last factor keeps MHA's name so the model's residual-writer
initialisation (std / √(2·n_layers) on ``o_proj.weight``) applies to it. The released code builds each
projection as ``nn.Sequential(nn.Linear(…, attn_lowdim, bias=False), nn.Linear(attn_lowdim, …, bias=False))``
and sets no initialisation of its own, so both factors get nn.Linear's default (checked in
``lpa_setting2.py``); what the paper's text says about it is unverified here (arXiv:2411.02063). Two
independently initialised factors give a product of small variance (the variances multiply, times the inner
size r); TransformerLM re-initialises every Linear with std 0.02, which makes it smaller still.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from attnlab.attention.heads.base import HEADS, Projection, merge_heads, split_heads


class LPAParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    rank: int = Field(gt=0)  # r, the low dimension every projection passes through


class LowRankHeads(nn.Module):
    """Bias-free q, k, v and output projections, each factored as D → r → H·d_h (output: H·d_h → r → D)."""

    def __init__(self, d_model: int, n_heads: int, rank: int):
        super().__init__()
        self.n_heads = n_heads
        inner = n_heads * (d_model // n_heads)
        self.q_down, self.q_up = nn.Linear(d_model, rank, bias=False), nn.Linear(rank, inner, bias=False)
        self.k_down, self.k_up = nn.Linear(d_model, rank, bias=False), nn.Linear(rank, inner, bias=False)
        self.v_down, self.v_up = nn.Linear(d_model, rank, bias=False), nn.Linear(rank, inner, bias=False)
        self.o_down, self.o_proj = nn.Linear(inner, rank, bias=False), nn.Linear(rank, d_model, bias=False)

    def project(self, x: Tensor, context: Tensor | None = None) -> Projection:
        source = x if context is None else context
        q = split_heads(self.q_up(self.q_down(x)), self.n_heads)  # [B, H, T, d]
        k = split_heads(self.k_up(self.k_down(source)), self.n_heads)  # [B, H, S, d]
        v = split_heads(self.v_up(self.v_down(source)), self.n_heads)
        return Projection(q, k, v)

    def combine(self, z: Tensor, x: Tensor) -> Tensor:
        return self.o_proj(self.o_down(merge_heads(z)))  # [B, H, T, d] → [B, T, H·d] → [B, T, r] → [B, T, D]


@HEADS.register(
    "lpa",
    summary="low-dimensional projected attention: every projection factored through rank r",
    paper="Lv et al. 2024, arXiv:2411.02063",
    params=LPAParams,
    example={"rank": 16},
)
def build_lpa(params: LPAParams, site) -> LowRankHeads:
    return LowRankHeads(site.d_model, site.n_heads, params.rank)
