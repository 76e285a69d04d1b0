"""Latent KV attention: MLA (DeepSeek-V2) and CLLA-style cross-layer sharing of the latent.

**MLA**, Multi-head Latent Attention ("DeepSeek-V2: A Strong, Economical, and Efficient Mixture-of-Experts
Language Model", DeepSeek-AI 2024, arXiv:2405.04434, §2.1). Keys and values of every head come from one
low-rank latent per token; RoPE lives in a separate, decoupled key shared by all heads:

    c_t   = norm(W_DKV h_t) ∈ R^{d_c}                    (kv_rank = d_c; the latent the cache needs)
    k_t,i = [W_UK,i c_t ; RoPE(W_KR h_t)]                (k^C per head, d_nope;  k^R ∈ R^{d_R} shared)
    v_t,i = W_UV,i c_t                                    (d_head)
    q_t,i = [q^C_t,i ; RoPE(q^R_t,i)],  [q^C; q^R] = W_UQ norm(W_DQ h_t)   (or W_Q h_t without a q latent)
    scores / √(d_nope + d_R);  out = W_O concat_i(head_i)

RoPE cannot touch k^C (that would block absorbing W_UK into W_Q), hence the decoupled key: ``rotate``
rotates only the last d_R channels of q and k with the layer's position encoding. A cache needs c_t and k^R_t:
(d_c + d_R) elements per token per layer (``kv_bytes_per_token``), against 2·H·d_head for MHA.

**CLLA**, cross-layer latent attention ("Lossless KV Cache Compression to 2%", Yang et al. (Tencent) 2024,
arXiv:2410.15252): MLA whose latent (c_t and the un-rotated k^R_t) is computed only by the first layer of
each group of ``share_every`` consecutive layers; the other layers of the group read it from
``AttentionSite.shared`` and apply their own W_UK, W_UV (they have no W_DKV, W_KR). This needs the layers
to run in order within one forward pass, as TransformerLM runs them; a layer that finds no latent from its
group's first layer raises. The stored latent can be fake-quantised to ``quant_bits`` (int8 / int4,
symmetric, one scale per token, straight-through gradient), which is what a quantised cache would hold.

Sources: MLA follows the paper's §2.1 equations (card 5b, a transcription) with Hugging Face's
``modeling_deepseek`` conventions as remembered, not re-read: RMSNorm on both latents, q/k head layout
[nope | rope], softmax scale (d_nope + d_R)^−½. CLLA has no public code: the layer grouping, what is shared
and the quantiser are a reconstruction from the abstract (card 5a), UNVERIFIED in every detail (group
size, bit width, per-token vs per-channel scale, whether k^R is quantised — here it is not).

Limits of this reference: attnlab's LayerKVCache stores the full per-head k and v (what ``project`` returns),
so decoding is exact but the cache is not actually compressed; ``kv_bytes_per_token`` reports the latent
cache analytically. The position encoding rotates d_head-sized slices (RoPE builds its frequencies from the
site's d_head), so d_R is 0 or d_head here; DeepSeek-V2's d_R = d_head/2 ratio is reached with
``nope_dim=2·d_head``. With d_R = 0 a rotary position encoding has no effect (NoPE); additive position
biases (ALiBi) still apply. Normalisers sized by ``site.d_head`` (LSSA's log d, kernel feature maps) see
d_head, not d_nope + d_R: kernel normalisers work only with rope_dim=0 and the default nope_dim.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from attnlab.attention.heads.base import HEADS, merge_heads, split_heads
from attnlab.errors import ConfigError
from attnlab.model.hooks import HookPoint
from attnlab.position.base import PositionEncoding


class MLAParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    kv_rank: int = Field(gt=0)  # d_c, the KV latent
    q_rank: int | None = Field(None, gt=0)  # d_c', the query latent; None: q = W_Q h directly
    rope_dim: int | None = Field(None, ge=0)  # d_R, the decoupled RoPE part; None: d_head; 0: none
    nope_dim: int | None = Field(None, gt=0)  # d_nope, the per-head content part of q and k; None: d_head
    latent_norm: bool = True  # RMSNorm on the latents, as DeepSeek-V2

    def check_site(self, site, field: str) -> None:
        if self.rope_dim not in (None, 0, site.d_head):
            raise ConfigError(
                f"{field}.rope_dim",
                self.rope_dim,
                "the position encoding rotates d_head-sized slices; set nope_dim for other ratios",
                [0, site.d_head],
            )


class LatentKVHeads(nn.Module):
    """MLA heads: q from x (optionally through a latent), k and v up-projected from a per-token KV latent."""

    def __init__(self, params: MLAParams, site, owns_latent: bool = True):
        super().__init__()
        d_model, h = site.d_model, site.n_heads
        self.n_heads, self.d_head, self.kv_rank = h, site.d_head, params.kv_rank
        self.rope_dim = site.d_head if params.rope_dim is None else params.rope_dim
        self.nope_dim = params.nope_dim or site.d_head
        d_qk = self.nope_dim + self.rope_dim

        def norm(dim: int) -> nn.Module:
            return nn.RMSNorm(dim) if params.latent_norm else nn.Identity()

        if params.q_rank is None:
            self.q_proj = nn.Linear(d_model, h * d_qk, bias=False)  # W_Q
            self.q_down = self.q_norm = self.q_up = None
        else:
            self.q_proj = None
            self.q_down = nn.Linear(d_model, params.q_rank, bias=False)  # W_DQ
            self.q_norm = norm(params.q_rank)
            self.q_up = nn.Linear(params.q_rank, h * d_qk, bias=False)  # W_UQ (with W_QR)
        if owns_latent:
            self.kv_down = nn.Linear(d_model, params.kv_rank, bias=False)  # W_DKV
            self.kv_norm = norm(params.kv_rank)
            self.k_rope = nn.Linear(d_model, self.rope_dim, bias=False) if self.rope_dim else None  # W_KR
        self.k_up = nn.Linear(params.kv_rank, h * self.nope_dim, bias=False)  # W_UK
        self.v_up = nn.Linear(params.kv_rank, h * self.d_head, bias=False)  # W_UV
        self.o_proj = nn.Linear(h * self.d_head, d_model, bias=False)  # W_O
        self.hook_latent_kv = HookPoint()

    def latent(self, source: Tensor) -> tuple[Tensor, Tensor | None]:
        """source [B, S, D] → c [B, S, d_c] and the un-rotated RoPE key k^R [B, S, d_R] (None when d_R = 0)."""
        c = self.kv_norm(self.kv_down(source))
        return c, (self.k_rope(source) if self.k_rope is not None else None)

    def queries(self, x: Tensor) -> Tensor:
        q = self.q_proj(x) if self.q_proj is not None else self.q_up(self.q_norm(self.q_down(x)))
        return split_heads(q, self.n_heads)  # [B, T, H·(nope+rope)] → [B, H, T, nope+rope]

    def project(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        c, k_rope = self.latent(x if context is None else context)
        c = self.hook_latent_kv(c)  # [B, S, d_c]
        k = split_heads(self.k_up(c), self.n_heads)  # [B, H, S, nope]
        v = split_heads(self.v_up(c), self.n_heads)  # [B, H, S, d_head]
        if k_rope is not None:  # one RoPE key for all heads: [B, S, d_R] → [B, H, S, d_R]
            k = torch.cat([k, k_rope.unsqueeze(1).expand(-1, self.n_heads, -1, -1)], dim=-1)
        return self.queries(x), k, v

    def rotate(self, position: PositionEncoding, q: Tensor, k: Tensor, positions: Tensor) -> tuple[Tensor, Tensor]:
        """Rotate only the decoupled [.., nope:] channels; the content part k^C stays position-free."""
        if not self.rope_dim:
            return q, k
        n = self.nope_dim
        q_rope, k_rope = position.rotate(q[..., n:], k[..., n:], positions)
        return torch.cat([q[..., :n], q_rope], dim=-1), torch.cat([k[..., :n], k_rope], dim=-1)

    def combine(self, z: Tensor, x: Tensor) -> Tensor:
        return self.o_proj(merge_heads(z))

    def kv_bytes_per_token(self, dtype: torch.dtype = torch.bfloat16) -> int:
        """Bytes per token of this layer's latent cache (c_t and k^R_t), not of the full k, v LayerKVCache holds."""
        return (self.kv_rank + self.rope_dim) * element_size(dtype)


def element_size(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def fake_quantise(x: Tensor, bits: int) -> Tensor:
    """Round x to a symmetric ``bits``-bit grid with one scale per row (token) and return it dequantised.

    scale = max|x| / (2^(bits−1) − 1) over the last dim; the gradient passes straight through (STE).
    """
    q_max = 2 ** (bits - 1) - 1
    scale = x.detach().abs().amax(-1, keepdim=True).clamp_min(torch.finfo(x.dtype).tiny) / q_max
    rounded = (x / scale).round().clamp(-q_max, q_max) * scale
    return x + (rounded - x).detach()


class CLLAParams(MLAParams):
    share_every: int = Field(2, gt=0)  # layers per group sharing one latent
    quant_bits: Literal[4, 8] | None = None  # fake-quantise the stored latent c_t


class CrossLayerLatentHeads(LatentKVHeads):
    """MLA whose latent is computed by the first layer of each group of ``share_every`` layers and reused."""

    def __init__(self, params: CLLAParams, site):
        group, offset = divmod(site.layer_idx, params.share_every)
        super().__init__(params, site, owns_latent=offset == 0)
        self.group, self.owner = group, offset == 0
        self.first_layer = self.group * params.share_every
        self.last_layer = min(self.first_layer + params.share_every, site.n_layers) - 1
        self.layer_idx, self.share_every, self.quant_bits = site.layer_idx, params.share_every, params.quant_bits
        self.n_groups = math.ceil(site.n_layers / params.share_every)
        self.shared = site.shared  # one dict per model (AttentionSite.shared)

    @property
    def key(self) -> str:
        return f"clla.latent.group{self.group}"

    def latent(self, source: Tensor) -> tuple[Tensor, Tensor | None]:
        if self.owner:
            c, k_rope = super().latent(source)
            if self.quant_bits is not None:
                c = fake_quantise(c, self.quant_bits)
            if self.last_layer > self.layer_idx:  # later layers of the group will read it in this pass
                self.shared[self.key] = (c, k_rope)
            return c, k_rope
        if self.key not in self.shared:
            raise RuntimeError(
                f"CLLA layer {self.layer_idx} reuses the latent KV of layer {self.first_layer}, which has not run "
                "in this forward pass; CLLA layers must run in order (as TransformerLM runs them)"
            )
        # The group's last reader removes the entry, so a latent never outlives its forward pass.
        c, k_rope = self.shared.pop(self.key) if self.layer_idx == self.last_layer else self.shared[self.key]
        if c.shape[:2] != source.shape[:2]:
            raise RuntimeError(
                f"CLLA layer {self.layer_idx} got input {tuple(source.shape[:2])} but layer {self.first_layer} "
                f"stored a latent for {tuple(c.shape[:2])} (batch, tokens); layers must run in order on one input"
            )
        return c, k_rope

    def kv_bytes_per_token(self, dtype: torch.dtype = torch.bfloat16) -> int:
        """Bytes per token of the whole model's latent cache: one (c_t, k^R_t) per group of layers.

        A quantised c_t costs ⌈d_c · bits / 8⌉ bytes plus one scale in ``dtype``; k^R stays in ``dtype``.
        """
        size = element_size(dtype)
        if self.quant_bits is None:
            latent = self.kv_rank * size
        else:
            latent = math.ceil(self.kv_rank * self.quant_bits / 8) + size
        return self.n_groups * (latent + self.rope_dim * size)


@HEADS.register(
    "mla",
    summary="multi-head latent attention: k, v up-projected from a per-token latent; decoupled RoPE key",
    paper="DeepSeek-AI 2024, arXiv:2405.04434",
    params=MLAParams,
    example={"kv_rank": 16, "q_rank": 24},
    # q/k carry a decoupled RoPE slice, so their width is not d_head: kernel feature maps sized by
    # d_head (Hedgehog, Based, Performer) do not fit.
    kernel_ok=False,
)
def build_mla(params: MLAParams, site) -> LatentKVHeads:
    return LatentKVHeads(params, site)


@HEADS.register(
    "clla",
    summary="cross-layer latent attention: MLA latent shared by groups of layers, optionally int8/int4",
    paper="Yang et al. 2024, arXiv:2410.15252 (reconstruction)",
    params=CLLAParams,
    example={"kv_rank": 16, "share_every": 2},
    cross=False,
    # q/k carry a decoupled RoPE slice, so their width is not d_head: kernel feature maps sized by
    # d_head (Hedgehog, Based, Performer) do not fit.
    kernel_ok=False,
)
def build_clla(params: CLLAParams, site) -> CrossLayerLatentHeads:
    return CrossLayerLatentHeads(params, site)
