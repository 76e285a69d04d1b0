"""PINE: position-invariant inference over a prompt of documents, for any attnlab model with rotary attention.

Wang et al., "Eliminating Position Bias of Language Models: A Mechanistic Approach" (ICLR 2025, arXiv:2407.01100);
the authors' implementation is github.com/wzq016/PINE, ``pine/models/llama/modeling_llama.py`` (the attention) and
``pine/models/llama/tokenization_llama.py`` (the layout). A prompt is ``prefix + documents + suffix``; the documents
are the parts whose order should not matter (retrieved passages, the options of a multiple-choice question).

Position bias comes from two places, and PINE removes both, in every attention layer:

1. the causal mask: a document sees only the documents before it. PINE makes the documents mutually visible:
   a document token sees the prefix, every other document entirely, and its own document causally; prefix and
   suffix stay causal (``PineLayout.visible``).
2. RoPE: a document's distance to the query depends on where it is. PINE places the documents per query, by
   importance: the authors compute attention *without* positions (q·k of the unrotated vectors, scaled, softmax
   over the document region), take each document's mean weight per token, and rank the documents; the most
   important one sits next to the query, the next before it, and so on, contiguously (``rank_shifts``).
   - A suffix (question) token ranks the documents by its own weights, per head.
   - A document token excludes its own document from that softmax; its document's rows are summed into one
     document-to-document score, and its own document always ranks first (it stays where it is, next to the
     query); so every token of a document uses the same order, per head.
   Before any re-ranking, every document ends at the same position (the base layout of the authors' tokenizer:
   document i occupies ``p + S − L_i … p + S − 1`` for a prefix of p tokens and documents of total length S), and
   the suffix starts at p + S. Positions are assigned in every layer from that layer's q and k.

Its two parts can be switched off one at a time, to see which one does what (``mask`` and ``positions`` of
``pine``): without the mask every query sees the keys up to it (the causal mask); without the positions every token
sits at its index (the plain RoPE layout). With both off, PINE is the plain model.

Per-query key positions are not one position per key, so they cannot go through ``position_ids``: ``pine`` swaps
the forward of every ``Attention`` module for ``pine_forward`` (the same projections, norms and output combination;
its own scores with per-(head, query, key) rotations, in query chunks), and puts it back afterwards. The attention
core is untouched. Reordering the documents permutes the document tokens' hidden states and leaves the prefix's and
the suffix's unchanged, up to float summation order, unless two documents tie exactly in importance (a stable sort
breaks ties by document order, as the authors' ``torch.argsort(..., stable=True)``).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from attnlab.attention import Attention
from attnlab.types import compute_dtype, repeat_kv

# rotary encodings whose ``rotate`` takes per-row positions [N, T] with one rotation shared by every head
PINE_POSITIONS = ("rope", "rope_pi", "rope_ntk", "yarn", "rope_abf", "nope")
PINE_HEADS = ("mha", "gqa", "mqa")
QUERY_CHUNK = 32  # queries per block of per-query key rotations: [B, H, chunk, T, d] at a time


@dataclass(frozen=True)
class PineLayout:
    """A prompt's segments by length: ``prefix`` tokens, then ``documents`` (one length each), then ``suffix``."""

    prefix: int
    documents: tuple[int, ...]
    suffix: int

    def __post_init__(self) -> None:
        if not self.documents or min(self.documents) < 1:
            raise ValueError(f"PineLayout.documents must be one or more positive lengths; got {self.documents}")
        if self.prefix < 0 or self.suffix < 1:
            raise ValueError(
                f"PineLayout needs prefix >= 0 and suffix >= 1 (the query tokens); got {self.prefix}, {self.suffix}"
            )

    @classmethod
    def of(cls, prefix: Sequence[int], documents: Sequence[Sequence[int]], suffix: Sequence[int]) -> PineLayout:
        return cls(len(prefix), tuple(len(d) for d in documents), len(suffix))

    @property
    def n_docs(self) -> int:
        return len(self.documents)

    @property
    def doc_tokens(self) -> int:
        return sum(self.documents)

    @property
    def total(self) -> int:
        return self.prefix + self.doc_tokens + self.suffix

    def segment_ids(self, device: torch.device | None = None) -> Tensor:
        """[T]: −1 for the prefix, i for document i, n_docs for the suffix."""
        parts = [torch.full((self.prefix,), -1)]
        parts += [torch.full((n,), i) for i, n in enumerate(self.documents)]
        parts.append(torch.full((self.suffix,), self.n_docs))
        return torch.cat(parts).to(device)

    def base_positions(self, device: torch.device | None = None) -> Tensor:
        """[T]: the prefix at 0…p−1, every document ending at p+S−1, the suffix from p+S on."""
        p, s = self.prefix, self.doc_tokens
        parts = [torch.arange(p)] + [torch.arange(p + s - n, p + s) for n in self.documents]
        parts.append(torch.arange(p + s, p + s + self.suffix))
        return torch.cat(parts).to(device)

    def visible(self, device: torch.device | None = None) -> Tensor:
        """[T, T] boolean, True where query i sees key j: causal, except that a document token sees every token
        of every other document (documents are mutually visible; the suffix never shows to them)."""
        seg = self.segment_ids(device)
        idx = torch.arange(self.total, device=device)
        causal = idx[:, None] >= idx[None, :]
        is_doc = (seg >= 0) & (seg < self.n_docs)
        other_doc = is_doc[:, None] & is_doc[None, :] & (seg[:, None] != seg[None, :])
        return causal | other_doc

    def concat(self, prefix: Sequence[int], documents: Sequence[Sequence[int]], suffix: Sequence[int]) -> list[int]:
        """The token list of these segments (checked against the layout)."""
        if PineLayout.of(prefix, documents, suffix) != self:
            raise ValueError("the segments do not match the layout")
        return [*prefix, *(t for d in documents for t in d), *suffix]


def rank_shifts(importance: Tensor, lengths: Tensor) -> Tensor:
    """importance [..., n] (higher: closer to the query), lengths [n] → shifts [..., n]: document j moves
    back by the total length of the documents ranked before it (a stable descending sort; ties keep order)."""
    order = torch.argsort(importance, dim=-1, descending=True, stable=True)
    ranked_len = lengths[order]
    before = torch.cumsum(ranked_len, dim=-1) - ranked_len
    return torch.empty_like(before).scatter_(-1, order, before)


def document_importance(q: Tensor, k: Tensor, layout: PineLayout, scale: float) -> Tensor:
    """q [B, H, T, d], k [B, H, T, d] unrotated → [B, H, T, n]: each query's mean softmax weight per token of
    each document, over the document region without positions; a document query leaves its own document out."""
    p, s = layout.prefix, layout.doc_tokens
    seg = layout.segment_ids(q.device)
    dtype = compute_dtype(q)
    scores = (q.to(dtype) * scale) @ k[:, :, p : p + s].to(dtype).transpose(-1, -2)  # [B, H, T, S]
    own = seg[:, None] == seg[None, p : p + s]
    if layout.n_docs > 1:  # with one document a document query has nothing left; its ranking is trivial
        scores = scores.masked_fill(own, float("-inf"))
    weights = torch.softmax(scores, dim=-1)
    member = torch.nn.functional.one_hot(seg[p : p + s], layout.n_docs).to(dtype)  # [S, n]
    lengths = member.sum(0)
    return (weights @ member) / lengths


def key_positions(q: Tensor, k: Tensor, layout: PineLayout, scale: float) -> Tensor:
    """[B, H, T, T] long: the position of key j when query i attends to it, per head (PINE's re-ranking)."""
    b, h, t, _ = q.shape
    n, p, s = layout.n_docs, layout.prefix, layout.doc_tokens
    seg = layout.segment_ids(q.device)
    lengths = torch.tensor(layout.documents, device=q.device)
    per_query = document_importance(q, k, layout, scale)  # [B, H, T, n]
    doc_rows = per_query[:, :, p : p + s]
    member = torch.nn.functional.one_hot(seg[p : p + s], n).to(doc_rows.dtype)  # [S, n]
    doc2doc = torch.einsum("bhsj,si->bhij", doc_rows, member)  # [B, H, n (query's doc), n (key's doc)]
    doc2doc = doc2doc.masked_fill(torch.eye(n, dtype=torch.bool, device=q.device), float("inf"))
    shifts = torch.zeros(b, h, t, n, dtype=torch.long, device=q.device)
    shifts[:, :, p : p + s] = rank_shifts(doc2doc, lengths)[:, :, seg[p : p + s]]
    shifts[:, :, p + s :] = rank_shifts(per_query[:, :, p + s :], lengths)
    base = layout.base_positions(q.device)
    key_seg = seg.clamp(0, n - 1)
    shift_per_key = torch.gather(shifts, -1, key_seg.expand(b, h, t, t))  # [B, H, T(query), T(key)]
    is_doc_key = (seg >= 0) & (seg < n)
    return base - shift_per_key * is_doc_key


def rotate_keys(position: nn.Module, k: Tensor, positions: Tensor) -> Tensor:
    """k [B, H, T, d] rotated at per-query positions [B, H, C, T] → [B, H, C, T, d]."""
    b, h, c, t = positions.shape
    rows = k[:, :, None].expand(b, h, c, t, k.shape[-1]).reshape(b * h * c, 1, t, k.shape[-1])
    _, rotated = position.rotate(rows, rows, positions.reshape(b * h * c, t))
    return rotated.reshape(b, h, c, t, k.shape[-1])


def pine_attention(
    position: nn.Module,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    layout: PineLayout,
    scale: float,
    chunk: int = QUERY_CHUNK,
    *,
    mask: bool = True,
    positions: bool = True,
) -> tuple[Tensor, Tensor]:
    """PINE's softmax attention over unrotated q [B, H, T, d], k, v [B, Hkv, T, ·] → (z [B, H, T, dv], weights
    [B, H, T, T]): each query rotated at its base position, each key at the position PINE gives it for that query
    and head, under ``layout.visible``. ``mask=False``: the causal mask instead; ``positions=False``: q and k
    rotated at their indices (the ablations of PINE's two parts)."""
    n_rep = q.shape[1] // k.shape[1]
    k, v = repeat_kv(k, n_rep), repeat_kv(v, n_rep)
    dtype = compute_dtype(q)
    t = q.shape[2]
    idx = torch.arange(t, device=q.device)
    visible = layout.visible(q.device) if mask else idx[:, None] >= idx[None, :]
    if not positions:
        q_rot, k_rot = position.rotate(q, k, idx)
        scores = (q_rot.to(dtype) * scale) @ k_rot.to(dtype).transpose(-1, -2)
        w = torch.softmax(scores.masked_fill(~visible, float("-inf")), dim=-1)
        return (w @ v.to(dtype)).to(v.dtype), w
    base = layout.base_positions(q.device)
    keys_at = key_positions(q, k, layout, scale)
    q_rot, _ = position.rotate(q, q, base)
    weights = []
    for lo in range(0, t, chunk):
        hi = min(lo + chunk, t)
        k_rot = rotate_keys(position, k, keys_at[:, :, lo:hi])  # [B, H, C, T, d]
        scores = torch.einsum("bhcd,bhctd->bhct", q_rot[:, :, lo:hi].to(dtype) * scale, k_rot.to(dtype))
        weights.append(torch.softmax(scores.masked_fill(~visible[lo:hi], float("-inf")), dim=-1))
    w = torch.cat(weights, dim=2)
    return (w @ v.to(dtype)).to(v.dtype), w


def check_pine(attn: Attention) -> None:
    """Raise ValueError unless PINE is defined for this layer: causal softmax self-attention with plain heads and
    a rotary (or no) position, no window, no edge normaliser."""
    cfg, site = attn.cfg, attn.site
    problems = {
        "heads": (cfg.heads, PINE_HEADS),
        "position": (cfg.position, PINE_POSITIONS),
        "normaliser": (attn.normaliser_name, ("softmax",)),
    }
    for field, (value, allowed) in problems.items():
        if value not in allowed:
            raise ValueError(f"pine: {field}={value!r} is not supported (allowed: {', '.join(allowed)})")
    if site.cross or not site.causal or cfg.window is not None:
        raise ValueError("pine: only causal self-attention without a window is supported")


def pine_forward(
    attn: Attention,
    layout: PineLayout,
    x: Tensor,
    context: Tensor | None = None,
    cache: Any = None,
    *,
    position_ids: Tensor | None = None,
    mask: Any = None,
    parts: tuple[bool, bool] = (True, True),
) -> Tensor:
    """``Attention.forward`` under PINE (same projections, qk-norm, hooks q/k/v/pattern/z and output); ``parts``:
    whether PINE's (mask, positions) are on."""
    if context is not None or cache is not None or position_ids is not None or mask is not None:
        raise ValueError("pine: a full prompt without context, cache, position_ids or mask (PINE assigns them)")
    if x.shape[1] != layout.total:
        raise ValueError(f"pine: the input has {x.shape[1]} tokens, the layout {layout.total}")
    projection = attn.heads.project(x, None)
    q, k = projection.q, projection.k
    if attn.q_norm is not None:
        q, k = attn.q_norm(q), attn.k_norm(k)
    q, k, v = attn.hook_q(q), attn.hook_k(k), attn.hook_v(projection.v)
    scale = q.shape[-1] ** -0.5 if attn.cfg.scale is None else attn.cfg.scale
    z, weights = pine_attention(attn.position, q, k, v, layout, scale, mask=parts[0], positions=parts[1])
    attn.hook_pattern(weights)
    return attn.heads.combine(attn.hook_z(z), x)


@contextmanager
def pine(model: nn.Module, layout: PineLayout, *, mask: bool = True, positions: bool = True) -> Iterator[None]:
    """Within the block, every attention layer of ``model`` runs PINE for prompts of ``layout`` (``mask`` /
    ``positions`` False: that part of PINE off, for its ablation)."""
    layers = [m for m in model.modules() if isinstance(m, Attention)]
    if not layers:
        raise ValueError("pine: the model has no attnlab Attention layer")
    for attn in layers:
        check_pine(attn)
    try:
        for attn in layers:
            attn.forward = functools.partial(  # type: ignore[method-assign]
                pine_forward, attn, layout, parts=(mask, positions)
            )
        yield
    finally:
        for attn in layers:
            attn.__dict__.pop("forward", None)


def pine_logits(
    model: nn.Module, tokens: Tensor, layout: PineLayout, *, mask: bool = True, positions: bool = True
) -> Tensor:
    """tokens [B, T] laid out as ``layout`` → the model's logits [B, T, V] under PINE (or one of its parts)."""
    with pine(model, layout, mask=mask, positions=positions):
        return model(tokens)
