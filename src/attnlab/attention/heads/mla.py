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
``AttentionSite.shared`` (a ``LayerShare``: the group's ``LatentKV`` by group index) and apply their own
W_UK, W_UV (they have no W_DKV, W_KR). This needs the layers
to run in order within one forward pass, as TransformerLM runs them; a layer that finds no latent from its
group's first layer raises. The stored latent can be fake-quantised to ``quant_bits`` (int8 / int4,
symmetric, one scale per token, straight-through gradient), and the KV cache then holds the integer codes
and scales, so a cached decode and a full pass see the same dequantised latent.

Sources: MLA follows the paper's §2.1 equations (arXiv:2405.04434) with the conventions of Hugging Face
transformers' DeepSeek-V2 attention (huggingface/transformers
``src/transformers/models/deepseek_v2/modeling_deepseek_v2.py``, ``DeepseekV2Attention``), checked in the
code: an RMSNorm on each latent (``q_a_layernorm`` over the q latent, ``kv_a_layernorm`` over c), the q/k head
layout [nope | rope] (``query_states = cat(q_pass, q_rot)``, ``key_states = cat(k_pass, k_rot)``, the rotated
key shared by all heads), softmax scale ``qk_head_dim ** -0.5`` = (d_nope + d_R)^−½. CLLA has no public
code: the layer grouping, what is shared and the quantiser are a reconstruction from the abstract of
arXiv:2410.15252 (which names "attention head/dimension reduction, layer sharing, and quantization"),
UNVERIFIED in every detail against the paper body (group size, bit width, per-token vs per-channel scale,
whether k^R is quantised — here it is not).

Incremental decoding caches the latent, not the full k and v (``extend_cache``, attnlab's LayerKVCache hook):

- ``mla``: the store holds ``latent`` c [B, T, d_c] and, when d_R > 0, ``k_rope`` [B, 1, T, d_R], the shared
  RoPE key already rotated. Each step rebuilds k^C = W_UK c and v = W_UV c for every cached token and appends
  the cached k^R to each head: the reference form, O(T · d_c · H · d_head) work per step. Production kernels
  use the "absorbed" form instead (W_UK folded into the query, q_i^T W_UK,i c, and W_UV into W_O), attending
  over the latent directly without materialising k, v; not needed here.
- ``clla``: the group's first layer stores the group latent: ``latent`` c in the model dtype, or, quantised,
  ``latent_codes`` (int8 codes [B, T, d_c]; int4 codes packed two per byte in uint8 [B, T, ⌈d_c/2⌉], so
  the bytes held are the packed bytes) plus ``latent_scale`` [B, T, 1] in the model dtype; and ``k_rope`` as
  MLA. The later layers of the group store NOTHING (their ``LayerKVCache.store`` stays empty, only ``length``
  advances): the first layer publishes the whole (dequantised) latent and rotated k^R of the current call in
  ``AttentionSite.shared.cached[g]``, and each reader rebuilds its k, v from it with its
  own W_UK, W_UV; the group's last reader removes the entry. Like the uncached sharing, this needs all
  layers to run in order in every decoding call (TransformerLM does). A reader checks that its own rotated
  k^R for the new tokens equals the first layer's (a position encoding that rotated keys differently per
  layer would make the shared rotated key wrong) and raises otherwise.

``kv_bytes_per_token`` is what ``LayerKVCache.nbytes()`` holds per token (per batch row) after decoding: per
layer for ``mla``, for the whole model for ``clla``. The new tokens' latent reaches ``extend_cache`` as a value:
``project`` returns it in its ``Projection`` (a ``NewLatent``: the latent after ``hook_latent_kv`` and, for CLLA's
first layer, the group latent and its codes from ``latent()``), and the layer hands it to ``extend_cache``; the
module keeps nothing between calls. The cache keeps the latent as ``latent``
computed it for ``clla`` (the group latent; edits made through ``hook_latent_kv`` are seen by ``mla``'s cache
but not by ``clla``'s); edits of ``hook_k`` / ``hook_v`` (and of the content part of ``hook_rot_k``) are not
seen by cached decoding, which rebuilds k^C and v from the latent.

Other limits: the position encoding rotates d_head-sized slices (RoPE builds its frequencies from the
site's d_head), so d_R is 0 or d_head here; DeepSeek-V2's d_R = d_head/2 ratio is reached with
``nope_dim=2·d_head``. With d_R = 0 a rotary position encoding has no effect (NoPE); additive position
biases (ALiBi) still apply. Normalisers sized by ``site.d_head`` (LSSA's log d, kernel feature maps) see
d_head, not d_nope + d_R: kernel normalisers work only with rope_dim=0 and the default nope_dim.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Literal, NamedTuple

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from attnlab.attention.heads.base import HEADS, Projection, merge_heads, split_heads
from attnlab.errors import ConfigError
from attnlab.hook_points import HookPoint
from attnlab.position.base import PositionEncoding
from attnlab.types import LatentKV

if TYPE_CHECKING:
    from attnlab.attention.build import LayerKVCache
    from attnlab.attention.config import LayerShare


class SourceLatent(NamedTuple):
    """What ``latent()`` computes for the new tokens: c [B, S, d_c], the un-rotated k^R [B, S, d_R] (or None), and
    for CLLA's quantised first layer its (codes, scale) (what its cache keeps)."""

    c: Tensor
    k_rope: Tensor | None
    codes: tuple[Tensor, Tensor] | None = None


class NewLatent(NamedTuple):
    """``project`` → ``extend_cache`` of one forward: the latent after ``hook_latent_kv`` (what MLA caches) and
    ``latent()``'s value (what CLLA's first layer caches)."""

    c: Tensor
    source: SourceLatent


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

    def latent(self, source: Tensor) -> SourceLatent:
        """source [B, S, D] → c [B, S, d_c] and the un-rotated RoPE key k^R [B, S, d_R] (None when d_R = 0)."""
        c = self.kv_norm(self.kv_down(source))
        return SourceLatent(c, self.k_rope(source) if self.k_rope is not None else None)

    def queries(self, x: Tensor) -> Tensor:
        q = self.q_proj(x) if self.q_proj is not None else self.q_up(self.q_norm(self.q_down(x)))
        return split_heads(q, self.n_heads)  # [B, T, H·(nope+rope)] → [B, H, T, nope+rope]

    def project(self, x: Tensor, context: Tensor | None = None) -> Projection:
        source = self.latent(x if context is None else context)
        c = self.hook_latent_kv(source.c)  # [B, S, d_c]
        k, v = self.up_project(c, None if source.k_rope is None else source.k_rope.unsqueeze(1))
        return Projection(self.queries(x), k, v, NewLatent(c, source))

    def up_project(self, c: Tensor, k_rope: Tensor | None) -> tuple[Tensor, Tensor]:
        """Latent c [B, S, d_c] and shared RoPE key [B, 1, S, d_R] (or None) → k [B, H, S, nope+rope], v."""
        k = split_heads(self.k_up(c), self.n_heads)  # [B, H, S, nope]
        v = split_heads(self.v_up(c), self.n_heads)  # [B, H, S, d_head]
        if k_rope is not None:  # one RoPE key for all heads: [B, 1, S, d_R] → [B, H, S, d_R]
            k = torch.cat([k, k_rope.expand(-1, self.n_heads, -1, -1)], dim=-1)
        return k, v

    def new_rope_key(self, k: Tensor) -> Tensor | None:
        """The new tokens' rotated, head-shared RoPE key [B, 1, T, d_R] as its own tensor (not a view of k)."""
        if not self.rope_dim:
            return None
        return k[:, :1, :, self.nope_dim :].clone(memory_format=torch.contiguous_format)

    @staticmethod
    def check_new(new: NewLatent, t_new: int) -> None:
        if new.c.shape[1] != t_new:
            raise ValueError(
                f"extend_cache got the latent of {new.c.shape[1]} tokens for {t_new} new keys; pass the latent that "
                "project() returned for the same tokens"
            )

    def extend_cache(self, cache: LayerKVCache, k: Tensor, v: Tensor, new: NewLatent) -> tuple[Tensor, Tensor]:
        """Cache the latent c [B, T, d_c] and the rotated RoPE key [B, 1, T, d_R]; rebuild k, v of all tokens.

        k, v are the new tokens' keys (rotated) and values; only k's RoPE slice is kept, the rest is rebuilt
        from the latent with W_UK, W_UV (the reference form; see the module docstring for the absorbed one).
        """
        t_new = k.shape[2]
        self.check_new(new, t_new)
        c_all = cache.append_to("latent", new.c, dim=1)  # [B, S, d_c]
        k_rope = self.new_rope_key(k)
        k_rope_all = None if k_rope is None else cache.append_to("k_rope", k_rope, dim=2)  # [B, 1, S, d_R]
        cache.length += t_new
        return self.up_project(c_all, k_rope_all)

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
        """Bytes per token (per batch row) of this layer's cache: c_t and k^R_t in ``dtype``, as ``nbytes`` counts."""
        return (self.kv_rank + self.rope_dim) * element_size(dtype)


def element_size(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def quantise(x: Tensor, bits: int) -> tuple[Tensor, Tensor]:
    """x [..., d] → int8 codes in [−q_max, q_max] and one scale per row [..., 1] (x's dtype), q_max = 2^(bits−1) − 1.

    scale = max|x| / q_max over the last dim; codes · scale is the dequantised value (``dequantise``).
    """
    q_max = 2 ** (bits - 1) - 1
    x = x.detach()
    scale = x.abs().amax(-1, keepdim=True).clamp_min(torch.finfo(x.dtype).tiny) / q_max
    return (x / scale).round().clamp(-q_max, q_max).to(torch.int8), scale


def dequantise(codes: Tensor, scale: Tensor) -> Tensor:
    return codes.to(scale.dtype) * scale


def fake_quantise(x: Tensor, bits: int) -> Tensor:
    """Round x to a symmetric ``bits``-bit grid with one scale per row (token) and return it dequantised.

    The gradient passes straight through (STE). Without a gradient to carry the result is exactly
    ``dequantise(*quantise(x, bits))``, bit for bit what a quantised cache rebuilds.
    """
    rounded = dequantise(*quantise(x, bits))
    return x + (rounded - x).detach() if x.requires_grad else rounded


def pack_int4(codes: Tensor) -> Tensor:
    """int8 codes in [−7, 7], [..., d] → uint8 [..., ⌈d/2⌉], two codes per byte (offset by 8, low nibble first)."""
    u = (codes + 8).to(torch.uint8)
    if u.shape[-1] % 2:
        u = torch.cat([u, torch.full_like(u[..., :1], 8)], dim=-1)
    return u[..., 0::2] | (u[..., 1::2] << 4)


def unpack_int4(packed: Tensor, d: int) -> Tensor:
    """Inverse of ``pack_int4``: uint8 [..., ⌈d/2⌉] → int8 codes [..., d]."""
    u = torch.stack([packed & 15, packed >> 4], dim=-1).flatten(-2)[..., :d]
    return u.to(torch.int8) - 8


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
        self.shared: LayerShare = site.shared  # one per model (AttentionSite.shared)

    def latent(self, source: Tensor) -> SourceLatent:
        if self.owner:
            c, k_rope, _ = super().latent(source)
            codes = None
            if self.quant_bits is not None:
                raw_codes, scale = quantise(c, self.quant_bits)
                c = fake_quantise(c, self.quant_bits)  # equals dequantise(codes, scale) without a gradient
                codes = (pack_int4(raw_codes) if self.quant_bits == 4 else raw_codes, scale)
            if self.last_layer > self.layer_idx:  # later layers of the group will read it in this pass
                self.shared.latents[self.group] = LatentKV(c, k_rope)
            return SourceLatent(c, k_rope, codes)  # c: what the cache keeps (the group latent, before the hook)
        if self.group not in self.shared.latents:
            raise RuntimeError(
                f"CLLA layer {self.layer_idx} reuses the latent KV of layer {self.first_layer}, which has not run "
                "in this forward pass; CLLA layers must run in order (as TransformerLM runs them)"
            )
        # The group's last reader removes the entry, so a latent never outlives its forward pass.
        latents = self.shared.latents
        c, k_rope = latents.pop(self.group) if self.layer_idx == self.last_layer else latents[self.group]
        if c.shape[:2] != source.shape[:2]:
            raise RuntimeError(
                f"CLLA layer {self.layer_idx} got input {tuple(source.shape[:2])} but layer {self.first_layer} "
                f"stored a latent for {tuple(c.shape[:2])} (batch, tokens); layers must run in order on one input"
            )
        return SourceLatent(c, k_rope)

    def extend_cache(self, cache: LayerKVCache, k: Tensor, v: Tensor, new: NewLatent) -> tuple[Tensor, Tensor]:
        """First layer of a group: cache the (quantised) group latent and the rotated RoPE key; later layers:
        cache nothing and rebuild k, v from the latent the first layer published for this call."""
        t_new = k.shape[2]
        self.check_new(new, t_new)
        cached = self.shared.cached
        if self.owner:
            c_all = self.extend_latent(cache, new.source)
            k_rope = self.new_rope_key(k)
            k_rope_all = None if k_rope is None else cache.append_to("k_rope", k_rope, dim=2)  # [B, 1, S, d_R]
            if self.last_layer > self.layer_idx:
                cached[self.group] = LatentKV(c_all, k_rope_all)
        else:
            if self.group not in cached:
                raise RuntimeError(
                    f"CLLA layer {self.layer_idx} decodes from the cached latent of layer {self.first_layer}, which "
                    "has not run in this call; CLLA layers must run in order (as TransformerLM runs them)"
                )
            c_all, k_rope_all = cached.pop(self.group) if self.layer_idx == self.last_layer else cached[self.group]
            if c_all.shape[:2] != (k.shape[0], cache.length + t_new):
                raise RuntimeError(
                    f"CLLA layer {self.layer_idx} has cached {cache.length} tokens and got {t_new} new ones, but "
                    f"layer {self.first_layer}'s latent covers {tuple(c_all.shape[:2])} (batch, tokens)"
                )
            k_rope = self.new_rope_key(k)
            if k_rope is not None and not torch.equal(k_rope, k_rope_all[:, :, -t_new:]):
                raise RuntimeError(
                    f"CLLA layer {self.layer_idx} rotates the shared RoPE key differently from layer "
                    f"{self.first_layer}; its cached rotated key cannot be shared"
                )
        cache.length += t_new
        return self.up_project(c_all, k_rope_all)

    def extend_latent(self, cache: LayerKVCache, source: SourceLatent) -> Tensor:
        """Append the new tokens' group latent to the first layer's cache; the whole latent [B, S, d_c], dequantised."""
        if self.quant_bits is None:
            return cache.append_to("latent", source.c, dim=1)
        assert source.codes is not None  # the owner's latent() quantises whenever quant_bits is set
        codes, scale = source.codes
        codes_all = cache.append_to("latent_codes", codes, dim=1)  # int8 [B, S, d_c] or packed uint8 [B, S, d_c/2]
        scale_all = cache.append_to("latent_scale", scale, dim=1)  # [B, S, 1], model dtype
        if self.quant_bits == 4:
            codes_all = unpack_int4(codes_all, self.kv_rank)
        return dequantise(codes_all, scale_all)

    def kv_bytes_per_token(self, dtype: torch.dtype = torch.bfloat16) -> int:
        """Bytes per token (per batch row) of the whole model's latent cache: one (c_t, k^R_t) per group of layers.

        A quantised c_t costs ⌈d_c · bits / 8⌉ bytes (int8 codes, or int4 codes packed two per byte) plus one
        scale in ``dtype``; k^R stays in ``dtype``. This is what the first layers' ``LayerKVCache.nbytes()``
        hold after decoding, in the model's dtype; the other layers hold nothing.
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
