"""Core Context Aware attention, CCA (Chen, You, Zhang, Li, Li, Wang, Tan, "Core Context Aware Attention for Long
Context Language Modeling", arXiv:2412.12465; code: chenyaofo/CCA-Attention, ``codebase/core/cca_attn.py``,
``cca_pooling.py``).

Two parts, fused in one softmax:

- **globality-aware pooling**: the keys are cut into groups of g consecutive tokens; group p (tokens pg … pg + g − 1)
  is merged into one core token, weighted by how much the group's last token attends to each of its tokens:

      α_p = softmax_r( q_{pg+g−1} · k_{pg+r} · scale )   r = 0 … g − 1
      k̂_p = Σ_r α_p,r k_{pg+r},   v̂_p = Σ_r α_p,r v_{pg+r}

  (the authors pool the rotated keys and the values with these weights, ``fast_calculate_fusion_weights`` and
  ``_weight_pooling``; the paper writes it as pooling the group's hidden states, the same thing for linear
  projections);
- **locality-preserving window**: a query at position t (1-based r = t + 1) reads the core tokens of the groups that
  end at least w tokens before it, P(r) = max(⌊(r − w) / g⌋, 0) of them, and every token after them, positions
  P(r)·g … t (between w and w + g − 1 tokens: the window grows until the next group is pooled, the authors'
  ``generate_mask``);
- **fusion**: one normaliser over [core tokens ⧺ window tokens] (softmax in the paper):

      out_t = Σ_{p < P(r)} w_t,p v̂_p + Σ_{j = P(r)g}^{t} w_t,j v_j

Each earlier token is reached once, through its core token or directly. Known answers (the tests): with g = 1 every
core token is its own token, and with w ≥ T nothing is pooled, so both are causal softmax.

Where it differs from the authors' code: their pooling covers the first ⌊(T − w)/g⌋ groups of the training
sequence, and their training path (the Triton kernel for long inputs) tests group visibility with w + g − 1,
equal to the mask above when g divides w; here visibility is the mask's rule for any g, w, and a query's groups
depend only on its position, so decoding with the KV cache equals the full pass. The KV cache keeps every key,
value and pooling query (the authors' cache keeps only the core tokens and the window: memory is not reduced here).
The pooling query of group p is the query of its last token, which a decoding step no longer has; so ``rotate``
returns the rotated queries beside the keys, [k ⧺ q] on the head axis ([B, 2H, T, d]: what ``hook_rot_k`` and the
cache hold), and ``attend`` splits them. Not supported: grouped-query heads, non-causal and cross-attention, a
sliding window, positions that act through a score_mod (a core token has no single position), and KV caches that
rotate keys themselves (StreamingLLM's positions in ``attnlab.longctx``), which bypass ``rotate``.

``attend`` is the dense reference (any score normaliser, float64; it returns the effective weights over the
tokens, the core tokens' weights spread by α, so out = weights · v). ``attend_sdpa`` is the fast path the dispatch
table (rule ``heads-sdpa-form``) runs for softmax without soft-capping and no hook on the weights: per query tile,
PyTorch's SDPA over [the visible core tokens ⧺ the tile's window keys] with a boolean mask — O(T · (T/g + w))
instead of O(T²) work and memory, the authors' own short-sequence path (``_attention_impl``) done tile by tile.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from attnlab.attention.core import AttnOutput, Normaliser, ScoreMod, check_qkv, compute_dtype
from attnlab.attention.heads.base import HEADS, MultiHead
from attnlab.attention.heads.landmark import refuse_unsupported
from attnlab.types import PositionBias

TILE_QUERIES = 64  # the fast path's query tile


class CCAParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    group: int = Field(16, gt=0)  # g: tokens pooled into one core token
    window: int = Field(64, gt=0)  # w: the locality-preserving window (it grows by up to g − 1 before a pooling)


def pooled_count(positions: Tensor, group: int, window: int) -> Tensor:
    """P(r)·g for 0-based query positions: how many leading tokens a query reads through core tokens."""
    return torch.div(positions + 1 - window, group, rounding_mode="floor").clamp(min=0) * group


def core_tokens(k: Tensor, v: Tensor, pool_q: Tensor, group: int, scale: float) -> tuple[Tensor, Tensor, Tensor]:
    """The core keys and values [B, H, m, d] of the m = ⌊Tk / g⌋ complete groups and their pooling weights α
    [B, H, m, g], from the group's last query (``pool_q`` holds every position's query)."""
    b, h, t_k, d = k.shape
    m = t_k // group
    kg = k[:, :, : m * group].reshape(b, h, m, group, d)
    vg = v[:, :, : m * group].reshape(b, h, m, group, v.shape[-1])
    last = pool_q[:, :, group - 1 : m * group : group]  # [B, H, m, d]
    alpha = torch.softmax((kg @ last[..., None]).squeeze(-1) * scale, dim=-1)  # [B, H, m, g]
    return (alpha[..., None] * kg).sum(-2), (alpha[..., None] * vg).sum(-2), alpha


def _split(q: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
    """[k ⧺ q] on the head axis (what ``CCAHeads.rotate`` returns) → keys, pooling queries."""
    h = q.shape[1]
    if k.shape[1] != 2 * h:
        raise ValueError(
            f"heads='cca' expects keys packed with their pooling queries ([B, 2H, T, d] from its own rotate), got "
            f"{k.shape[1]} key heads for {h} query heads: a KV cache that rotates keys itself bypasses it"
        )
    return k[:, :h], k[:, h:]


def cca_reference(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    pool_q: Tensor,
    *,
    normaliser: Normaliser,
    group: int,
    window: int,
    scale: float | None = None,
) -> AttnOutput:
    """Dense causal CCA attention with ``normaliser`` as the fusion's softmax. Queries are the last Tq of the Tk
    positions. Returns the effective weights over the tokens [B, H, Tq, Tk] and the causally masked scores."""
    check_qkv(q, k, v, causal=True, same_kv_heads=True)
    b, h, t_q, _ = q.shape
    t_k = k.shape[2]
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    dtype = compute_dtype(q)
    qc, kc, vc = q.to(dtype), k.to(dtype), v.to(dtype)
    core_k, core_v, alpha = core_tokens(kc, vc, pool_q.to(dtype), group, scale)
    m = core_k.shape[2]
    dev = q.device
    q_pos, k_pos = torch.arange(t_q, device=dev) + (t_k - t_q), torch.arange(t_k, device=dev)
    pooled = pooled_count(q_pos, group, window)[:, None]  # [Tq, 1]
    core_mask = torch.arange(m, device=dev)[None] * group < pooled  # [Tq, m]
    visible = k_pos[None] <= q_pos[:, None]
    token_mask = visible & (k_pos[None] >= pooled)  # [Tq, Tk]
    core_scores = (qc * scale) @ core_k.transpose(-1, -2)
    scores = (qc * scale) @ kc.transpose(-1, -2)
    w = normaliser(torch.cat([core_scores, scores], dim=-1), torch.cat([core_mask, token_mask], dim=-1))
    w_core, w_tok = w[..., :m], w[..., m:]
    out = w_core @ core_v + w_tok @ vc
    spread = (w_core[..., None] * alpha[:, :, None]).reshape(b, h, t_q, m * group)  # core weight → its tokens
    weights = w_tok + F.pad(spread, (0, t_k - m * group))
    return AttnOutput(out.to(v.dtype), scores.masked_fill(~visible, float("-inf")), weights)


def cca_sdpa(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    pool_q: Tensor,
    *,
    group: int,
    window: int,
    scale: float | None = None,
    tile: int = TILE_QUERIES,
) -> Tensor:
    """Softmax CCA attention by query tiles through SDPA over [visible core tokens ⧺ window keys]; equals
    ``cca_reference`` with softmax (the tests check it)."""
    check_qkv(q, k, v, causal=True, same_kv_heads=True)
    t_q, t_k, out_dtype = q.shape[2], k.shape[2], v.dtype
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    dtype = compute_dtype(q)  # half precision computes in float32, as the reference does
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    core_k, core_v, _ = core_tokens(k, v, pool_q.to(dtype), group, scale)
    offset, dev = t_k - t_q, q.device
    outs = []
    for lo in range(offset, t_k, tile):
        hi = min(lo + tile, t_k)
        q_pos = torch.arange(lo, hi, device=dev)
        pooled = pooled_count(q_pos, group, window)  # non-decreasing in the position
        first, n_core = int(pooled[0]), int(pooled[-1]) // group
        k_pos = torch.arange(first, hi, device=dev)
        mask = torch.cat(
            [
                torch.arange(n_core, device=dev)[None] * group < pooled[:, None],
                (k_pos[None] <= q_pos[:, None]) & (k_pos[None] >= pooled[:, None]),
            ],
            dim=-1,
        )
        keys = torch.cat([core_k[:, :, :n_core], k[:, :, first:hi]], dim=2)
        values = torch.cat([core_v[:, :, :n_core], v[:, :, first:hi]], dim=2)
        q_tile = q[:, :, lo - offset : hi - offset]
        outs.append(F.scaled_dot_product_attention(q_tile, keys, values, attn_mask=mask, scale=scale))
    return torch.cat(outs, dim=2).to(out_dtype)


class CCAHeads(MultiHead):
    """Multi-head projections; ``rotate`` keeps the rotated queries beside the keys for the pooling."""

    def __init__(self, d_model: int, n_heads: int, group: int, window: int):
        super().__init__(d_model, n_heads, n_heads)
        self.group, self.window = group, window

    def rotate(self, position, q: Tensor, k: Tensor, positions: Tensor) -> tuple[Tensor, Tensor]:
        """The position's rotation, then [k ⧺ q] on the head axis: the cache keeps each group's pooling query."""
        q, k = position.rotate(q, k, positions)
        return q, torch.cat([k, q.to(k.dtype)], dim=1)

    def attend(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        *,
        normaliser: Normaliser,
        score_mod: ScoreMod | None = None,
        causal: bool = True,
        scale: float | None = None,
        window: int | None = None,
    ) -> AttnOutput:
        """The dense reference, ``cca_reference``, with the layer's normaliser."""
        refuse_unsupported("cca", window, score_mod, causal, normaliser)
        keys, pool_q = _split(q, k)
        return cca_reference(
            q, keys, v, pool_q, normaliser=normaliser, group=self.group, window=self.window, scale=scale
        )

    def attend_sdpa(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        *,
        normaliser: Normaliser | None = None,
        bias: PositionBias | None = None,
        causal: bool = True,
        scale: float | None = None,
        window: int | None = None,
    ) -> AttnOutput:
        """The fused form for softmax (``cca_sdpa``): no scores or weights."""
        refuse_unsupported("cca", window, bias, causal, normaliser)
        keys, pool_q = _split(q, k)
        return AttnOutput(cca_sdpa(q, keys, v, pool_q, group=self.group, window=self.window, scale=scale), None, None)


@HEADS.register(
    "cca",
    summary="core context aware attention: pooled core tokens of far groups plus a local window, one softmax",
    paper="Chen et al. 2024, arXiv:2412.12465",
    params=CCAParams,
    example={"group": 2, "window": 3},
    non_causal=False,
    cross=False,
    score_mod=False,
    kernel_ok=False,
)
def build_cca(params: CCAParams, site) -> CCAHeads:
    return CCAHeads(site.d_model, site.n_heads, params.group, params.window)
