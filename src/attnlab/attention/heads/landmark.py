"""Landmark attention (Mohtashami & Jaggi, "Random-Access Infinite Context Length for Transformers", NeurIPS 2023,
arXiv:2305.16300; code: epfml/landmark-attention, ``models/landmark.py``, ``landmark_grouped_softmax``).

The token stream carries a landmark token after every ``block`` = l ordinary tokens, so the stream is cut into
blocks of l + 1 positions, the last of which is the block's landmark (the authors' data pipeline,
``data/utils.py::add_mem_tokens``, inserts it; attnlab's ``landmarks`` task does the same to any task). A landmark is
an ordinary token for the projections, the MLP and the residual stream, so its key at every layer is whatever the
network computed for it. Attention uses it as a gate — the grouped softmax. For a query at position t in block c:

    G(t)  = {regular tokens j ≤ t of block c}  ∪  {landmarks of blocks b < c}        the query's own group
    B_b   = {the l regular tokens of block b}                                          one group per earlier block
    g_t   = normaliser(s_t over G(t))                 (softmax in the paper)
    h_t,b = normaliser(s_t over B_b)
    w_tj  = g_tj                    j a regular token of block c
          = g_t,L(b) · h_t,b,j      j a regular token of an earlier block b (L(b): b's landmark)
          = 0                       j a landmark (it gates its block, it is never read)
    out_t = Σ_j w_tj v_j

With softmax, w_t is a distribution: a block is retrieved exactly as much as its landmark wins in the query's own
softmax, and the block's tokens share that mass by their own scores. A landmark as a query (the paper's code) sees
its own block's regular tokens; its own landmark key is masked. One block (t < l + 1, or no landmark yet) is causal
softmax over the block: the known answer the tests check.

Where it differs from the authors' code: the landmark positions are the fixed period l + 1 of the stream (their
training data has the same period; they mark landmarks by token id, ``idx == landmark_id``). The form above
is what the paper trains. Its retrieval at inference is ``top_k`` = k: each query, in each head, keeps the k earlier
blocks whose landmarks score highest and drops the others' landmarks from its group (so their tokens get no weight;
the authors' ``cache_selection_method="per_token_and_head"`` in ``models/caches/mem_cache.py``). No parameter
depends on k, so a model trained with every block can be evaluated with ``top_k`` by changing ``heads_args``. What
is not the authors': their cache stores whole blocks (offloaded to CPU) and gives the retrieved blocks new positions
just before the current context; here the KV cache keeps every key at its own position and retrieval is a mask over
them, so decoding with the cache equals the full pass, and memory is not reduced. Another normaliser than
softmax replaces both softmaxes (a generalisation; the paper's model is the default). Not supported: non-causal
and cross-attention (there is no "earlier block" there), a sliding window, positions that act through a
score_mod (ALiBi, T5: the gate's score would need a landmark position of its own), and KV caches that drop tokens
(``attnlab.experiments.kv_eviction``): the layer finds the landmarks by their index among the keys, which eviction
shifts (that experiment does not refuse this heads module yet: do not combine them).

``attend`` is the dense reference (the spec: any score normaliser, float64, returns the effective weights w over
the keys, with exact zeros on landmarks and future keys, for the lens). ``attend_sdpa`` is the fast path the
dispatch table (``attnlab.attention.dispatch``, rule ``heads-sdpa-form``) runs for softmax without soft-capping and
no hook on the weights: the same grouped softmax as one softmax over shifted scores,

    w_tj = softmax_j(s_tj + a_tj),  a_tj = s_t,L(b) − logsumexp_{j' ∈ B_b} s_tj'   (earlier blocks), 0 (own block)

(Σ_j∈B_b exp(s_tj + a_tj) = exp(s_t,L(b)), so the row's normaliser is the paper's), in query tiles of whole
blocks against the keys up to the tile (half the work of the dense form when causal), each tile recomputed in the
backward (``torch.utils.checkpoint``): memory O(tile · T) instead of O(T²). The tests check it against ``attend``:
outputs and every gradient, odd shapes, cached queries, float32, bfloat16 and float64.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from attnlab.attention.core import AttnOutput, Normaliser, ScoreMod, check_qkv, compute_dtype, repeat_kv
from attnlab.attention.heads.base import HEADS, MultiHead, check_kv_heads
from attnlab.errors import ConfigError
from attnlab.types import PositionBias

TILE_POSITIONS = 128  # the fast path's query tile: about this many positions, a whole number of blocks


class LandmarkParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    block: int = Field(16, gt=0)  # l: regular tokens per block; the stream has a landmark at every (l + 1)-th place
    top_k: int | None = Field(None, gt=0)  # each query reads its k best earlier blocks (by landmark score); None: all
    n_kv_heads: int | None = Field(None, gt=0)

    def check_site(self, site, field: str) -> None:
        check_kv_heads(self.n_kv_heads, site, field)


def landmark_positions(length: int, block: int, device: torch.device | None = None) -> Tensor:
    """Boolean [length]: True at the landmarks of a stream with one after every ``block`` tokens."""
    return torch.arange(length, device=device) % (block + 1) == block


def refuse_unsupported(heads: str, window: int | None, score_mod: object, causal: bool, normaliser: object) -> None:
    if window is not None:
        raise ConfigError("window", window, f"heads={heads!r} has its own block structure", "None")
    if score_mod is not None:
        raise ValueError(f"heads={heads!r} does not honour a score_mod (its capabilities say so)")
    if not causal:
        raise ValueError(f"heads={heads!r} is causal only (its capabilities say so)")
    if hasattr(normaliser, "attend"):
        raise ValueError(
            f"heads={heads!r} computes score-based attention itself; normaliser {type(normaliser).__name__} has its "
            "own attention computation (kernel attention): use a score normaliser such as softmax"
        )


def top_blocks(landmark_scores: Tensor, earlier: Tensor, top_k: int | None) -> Tensor:
    """Which earlier blocks a query reads: all of them (``top_k`` None), else the ``top_k`` whose landmark scores
    are highest, per query and head (the authors' ``cache_selection_method="per_token_and_head"``; ties keep all).
    ``landmark_scores`` [..., n] and the boolean ``earlier`` [..., n] (broadcastable) → boolean [..., n]."""
    if top_k is None:
        return earlier
    masked = landmark_scores.masked_fill(~earlier, float("-inf"))
    kth = masked.topk(min(top_k, masked.shape[-1]), dim=-1).values[..., -1:]  # −inf when fewer blocks exist
    return earlier & (masked >= kth)


def landmark_reference(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    normaliser: Normaliser,
    block: int,
    scale: float | None = None,
    top_k: int | None = None,
) -> AttnOutput:
    """Dense causal landmark attention: the grouped softmax of the module docstring, with ``normaliser`` for both
    softmaxes. Queries are the last Tq of the Tk positions (KV-cache decoding). Returns the effective weights
    [B, H, Tq, Tk] (zero on landmarks and future keys) and the causally masked scores."""
    check_qkv(q, k, v, causal=True)
    rep = q.shape[1] // k.shape[1]
    b, h, t_q, _ = q.shape
    t_k, period = k.shape[2], block + 1
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    dtype = compute_dtype(q)
    scores = (q.to(dtype) * scale) @ repeat_kv(k, rep).to(dtype).transpose(-1, -2)  # [B, H, Tq, Tk]
    dev = q.device
    k_pos, q_pos = torch.arange(t_k, device=dev), torch.arange(t_q, device=dev) + (t_k - t_q)
    k_block, q_block = k_pos // period, q_pos // period
    landmark = landmark_positions(t_k, block, dev)
    visible = k_pos[None] <= q_pos[:, None]  # [Tq, Tk]
    own = visible & ~landmark & (k_block[None] == q_block[:, None])  # the query's block, regular tokens
    gates = top_blocks(scores.detach(), landmark & (k_block[None] < q_block[:, None]), top_k)  # earlier landmarks
    group = normaliser(scores, own | gates)  # [B, H, Tq, Tk]
    # every block's own normaliser, over its l regular tokens (rows of blocks not yet earlier are gated by 0)
    n_blocks = -(-t_k // period)
    pad = n_blocks * period - t_k
    per_block = F.pad(scores, (0, pad)).view(b, h, t_q * n_blocks, period)
    exists = (torch.arange(n_blocks * period, device=dev) < t_k).view(n_blocks, period)
    regular = exists & (torch.arange(period, device=dev) < block)  # [n_blocks, period]
    within = normaliser(per_block, regular.repeat(t_q, 1)).view(b, h, t_q, n_blocks, period)
    gate = F.pad(group, (0, pad)).view(b, h, t_q, n_blocks, period)[..., block]  # [B, H, Tq, n_blocks]
    earlier = (within * gate[..., None]).view(b, h, t_q, n_blocks * period)[..., :t_k]
    weights = torch.where(own, group, earlier)  # landmarks: within is 0 there (not regular)
    out = (weights @ repeat_kv(v, rep).to(dtype)).to(v.dtype)
    return AttnOutput(out, scores.masked_fill(~visible, float("-inf")), weights)


def _landmark_tile(q: Tensor, k: Tensor, v: Tensor, start: int, block: int, scale: float, top_k: int | None) -> Tensor:
    """Softmax landmark attention of the queries at positions start … start + Tq − 1 over keys 0 … start + Tq − 1."""
    b, h, t_q, _ = q.shape
    t_k, period = k.shape[2], block + 1
    n_blocks = -(-t_k // period)
    s = F.pad((q * scale) @ k.transpose(-1, -2), (0, n_blocks * period - t_k))  # padded keys score 0 (finite)
    s = s.view(b, h, t_q, n_blocks, period)
    lse = torch.logsumexp(s[..., :block], dim=-1)  # [B, H, Tq, n_blocks]: each block's own log-normaliser
    shift = (s[..., block] - lse)[..., None]  # the landmark's score minus it
    dev = q.device
    q_pos = torch.arange(t_q, device=dev) + start
    q_block = q_pos // period  # [Tq]
    blocks, slot = torch.arange(n_blocks, device=dev), torch.arange(period, device=dev)
    k_pos = blocks[:, None] * period + slot  # [n_blocks, period]
    regular = slot < block
    read = top_blocks(s[..., block].detach(), blocks[None] < q_block[:, None], top_k)  # [·, Tq, n_blocks]
    earlier = read[..., None] & regular  # [·, Tq, n_blocks, period]
    own = (blocks[None, :, None] == q_block[:, None, None]) & regular & (k_pos[None] <= q_pos[:, None, None])
    a = torch.where(earlier, shift, torch.where(own, 0.0, float("-inf")))
    w = torch.softmax((s + a).view(b, h, t_q, n_blocks * period), dim=-1)[..., :t_k]
    return w @ v


def landmark_tiled(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    block: int,
    scale: float | None = None,
    top_k: int | None = None,
    tile: int = TILE_POSITIONS,
) -> Tensor:
    """Softmax landmark attention in query tiles of whole blocks, recomputed in the backward; equals
    ``landmark_reference`` with softmax (the tests check it). Queries are the last Tq of the Tk positions."""
    check_qkv(q, k, v, causal=True)
    rep = q.shape[1] // k.shape[1]
    t_q, t_k, period = q.shape[2], k.shape[2], block + 1
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    dtype = compute_dtype(q)
    qc, kc, vc = q.to(dtype), repeat_kv(k, rep).to(dtype), repeat_kv(v, rep).to(dtype)
    step = max(1, tile // period) * period
    offset = t_k - t_q
    edges = [offset, *range((offset // step + 1) * step, t_k, step), t_k]
    grads = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
    outs = []
    for lo, hi in itertools.pairwise(edges):
        args = (qc[:, :, lo - offset : hi - offset], kc[:, :, :hi], vc[:, :, :hi], lo, block, scale, top_k)
        outs.append(checkpoint(_landmark_tile, *args, use_reentrant=False) if grads else _landmark_tile(*args))
    return torch.cat(outs, dim=2).to(v.dtype)


class LandmarkHeads(MultiHead):
    """Multi-head (or grouped-query) projections; attention is the grouped softmax over a stream with landmarks."""

    def __init__(self, d_model: int, n_heads: int, n_kv_heads: int, block: int, top_k: int | None = None):
        super().__init__(d_model, n_heads, n_kv_heads)
        self.block, self.top_k = block, top_k

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
        """The dense reference, ``landmark_reference``, with the layer's normaliser."""
        refuse_unsupported("landmark", window, score_mod, causal, normaliser)
        return landmark_reference(q, k, v, normaliser=normaliser, block=self.block, scale=scale, top_k=self.top_k)

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
        """The fused form for softmax (``landmark_tiled``): no scores or weights. The dispatch sends only softmax
        without soft-capping here; a bias is refused at config time (no score_mod)."""
        refuse_unsupported("landmark", window, bias, causal, normaliser)
        out = landmark_tiled(q, k, v, block=self.block, scale=scale, top_k=self.top_k)
        return AttnOutput(out, None, None)


@HEADS.register(
    "landmark",
    summary="landmark attention: a landmark token per block gates its block in a grouped softmax",
    paper="Mohtashami & Jaggi 2023, arXiv:2305.16300",
    params=LandmarkParams,
    example={"block": 3},
    non_causal=False,
    cross=False,
    score_mod=False,
    kernel_ok=False,
)
def build_landmark(params: LandmarkParams, site) -> LandmarkHeads:
    return LandmarkHeads(site.d_model, site.n_heads, params.n_kv_heads or site.n_heads, params.block, params.top_k)
