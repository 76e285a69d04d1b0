"""The heads axis: how q, k, v are produced from the hidden states and how head outputs are combined.

Multi-head attention (Vaswani et al. 2017), grouped-query attention (GQA; Ainslie et al., 2023,
arXiv:2305.13245) and multi-query attention (MQA; Shazeer, 2019, arXiv:1911.02150) are one module with
``n_kv_heads`` = H, a divisor of H, and 1. Query head h reads key/value head h // (H / n_kv_heads).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple

from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from attnlab.errors import ConfigError
from attnlab.registry import Registry

if TYPE_CHECKING:
    from attnlab.attention.config import AttentionSite

HEADS: Registry = Registry("heads")


class Projection(NamedTuple):
    """What ``project`` returns: q [B, H, T, d], k, v [B, Hkv, S, ·], and what this heads module's own
    ``extend_cache`` needs from the same forward (MLA / CLLA: the new tokens' latent), handed back by the layer."""

    q: Tensor
    k: Tensor
    v: Tensor
    latent: Any = None


def check_kv_heads(n_kv_heads: int | None, site: AttentionSite, field: str) -> None:
    if n_kv_heads is not None and site.n_heads % n_kv_heads:
        raise ConfigError(
            f"{field}.n_kv_heads",
            n_kv_heads,
            f"must divide n_heads={site.n_heads}",
            [h for h in range(1, site.n_heads + 1) if site.n_heads % h == 0],
        )


class MHAParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    bias: bool = False  # biases on the q, k, v and output projections (BERT, GPT-2); modern LMs have none


class GQAParams(MHAParams):
    n_kv_heads: int = Field(gt=0)

    def check_site(self, site: AttentionSite, field: str) -> None:
        check_kv_heads(self.n_kv_heads, site, field)


def split_heads(x: Tensor, n_heads: int) -> Tensor:
    b, t, _ = x.shape
    return x.view(b, t, n_heads, -1).transpose(1, 2)  # [B, T, H*d] → [B, H, T, d]


def merge_heads(z: Tensor) -> Tensor:
    b, h, t, d = z.shape
    return z.transpose(1, 2).reshape(b, t, h * d)  # [B, H, T, d] → [B, T, H*d]


class MultiHead(nn.Module):
    """q, k, v and output projections (bias-free unless ``bias``) with ``n_kv_heads`` key/value heads."""

    def __init__(self, d_model: int, n_heads: int, n_kv_heads: int, bias: bool = False):
        super().__init__()
        if n_heads % n_kv_heads:
            raise ValueError(f"n_kv_heads={n_kv_heads} must divide n_heads={n_heads}")
        self.n_heads, self.n_kv_heads = n_heads, n_kv_heads
        self.d_head = d_model // n_heads
        self.q_proj = nn.Linear(d_model, n_heads * self.d_head, bias=bias)
        self.k_proj = nn.Linear(d_model, n_kv_heads * self.d_head, bias=bias)
        self.v_proj = nn.Linear(d_model, n_kv_heads * self.d_head, bias=bias)
        self.o_proj = nn.Linear(n_heads * self.d_head, d_model, bias=bias)

    def project(self, x: Tensor, context: Tensor | None = None) -> Projection:
        """x [B, T, D] (and context [B, S, D] for cross-attention) → q [B,H,T,d], k, v [B,Hkv,S,d]."""
        source = x if context is None else context
        q = split_heads(self.q_proj(x), self.n_heads)
        k = split_heads(self.k_proj(source), self.n_kv_heads)
        v = split_heads(self.v_proj(source), self.n_kv_heads)
        return Projection(q, k, v)

    def combine(self, z: Tensor, x: Tensor) -> Tensor:
        """Head outputs z [B, H, T, d] → [B, T, D]; x is the block input (used by gated heads)."""
        return self.o_proj(merge_heads(z))


@HEADS.register("mha", summary="multi-head attention", paper="Vaswani et al. 2017, arXiv:1706.03762", params=MHAParams)
def build_mha(params: MHAParams, site: AttentionSite) -> MultiHead:
    return MultiHead(site.d_model, site.n_heads, site.n_heads, params.bias)


@HEADS.register(
    "gqa",
    summary="grouped-query attention: n_kv_heads shared key/value heads",
    paper="Ainslie et al. 2023, arXiv:2305.13245",
    params=GQAParams,
    example={"n_kv_heads": 2},
)
def build_gqa(params: GQAParams, site: AttentionSite) -> MultiHead:
    return MultiHead(site.d_model, site.n_heads, params.n_kv_heads, params.bias)


@HEADS.register(
    "mqa",
    summary="multi-query attention: one key/value head",
    paper="Shazeer 2019, arXiv:1911.02150",
    params=MHAParams,
)
def build_mqa(params: MHAParams, site: AttentionSite) -> MultiHead:
    return MultiHead(site.d_model, site.n_heads, 1, params.bias)
