"""Concentric causal attention (CCA), its text analogue: documents laid out as rings around the question.

Xing et al., "Mitigating Object Hallucination via Concentric Causal Attention" (NeurIPS 2024, arXiv:2410.15926);
the authors' code is github.com/xing0047/cca-llava, ``llava/cca_utils/cca.py`` (``cca_forward``). In LLaVA the
24 × 24 image tokens keep their raster order in the sequence, but each gets the position of its ring: ring r
(r = 0 the border … 11 the centre) sits at ``s + r`` for an image starting at s, and the text after the image
starts at ``s + 12``. So the RoPE distance from the instruction to any image token is at most 12 instead of up to
576, and every token of a ring is as far from it. The causal mask follows the positions, not the indices: an image
query at position x sees every image key at a position ≤ x (its own ring and the outer ones, in both sequence
directions); text keeps the usual causal mask.

The text analogue, for a prompt ``prefix + documents + suffix`` (``lens.pine.PineLayout``; the suffix is the
question): the rings are the tokens' distances to the question. Document i of L_i tokens ends where every other
document ends; with M = max_i L_i and a prefix of p tokens, its token j (0-based) has the position

    pos = p + M − L_i + j,          the suffix starts at p + M,

so the last token of every document is next to the question and the distance from the question to a document
token is at most M (in the plain layout, up to the total length of the documents, which grows with their number).
The mask (``cca_visible``): a document query at position x sees the prefix and every document key at a position
≤ x, in any document; the prefix and the suffix are causal as usual. Within a document the positions increase with
the index, so a document still reads itself causally.

Positions and mask then depend on a document's length and on nothing about its place in the prompt: reordering the
documents permutes the document tokens' hidden states and leaves the prefix's and the suffix's unchanged (up to
float summation order). Unlike PINE (``lens.pine``), every query sees the same layout, so CCA runs through the
attention core's ``position_ids`` and ``AttentionMask`` (one position per key). The mask shows some keys after a
query's index (a later document's outer ring), which a causal layer's own rule would hide, so ``concentric`` lifts
every layer's causal rule while it runs and the mask, which contains causality outside the documents, is the whole
rule. With one document the layout is the plain one (positions equal to the indices, the causal mask), and
``cca_logits`` returns the plain model's logits bitwise.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from attnlab.attention import Attention
from attnlab.lens.pine import PineLayout
from attnlab.types import AttentionMask


def cca_positions(layout: PineLayout, device: torch.device | None = None) -> Tensor:
    """[T]: the prefix at 0…p−1, every document ending at p+M−1 (M: the longest), the suffix from p+M on."""
    p, m = layout.prefix, max(layout.documents)
    parts = [torch.arange(p)] + [torch.arange(p + m - n, p + m) for n in layout.documents]
    parts.append(torch.arange(p + m, p + m + layout.suffix))
    return torch.cat(parts).to(device)


def cca_visible(layout: PineLayout, device: torch.device | None = None) -> Tensor:
    """[T, T] boolean, True where query i sees key j: between document tokens, key position ≤ query position
    (the concentric causal mask); elsewhere the causal mask over indices."""
    seg = layout.segment_ids(device)
    pos = cca_positions(layout, device)
    idx = torch.arange(layout.total, device=device)
    is_doc = (seg >= 0) & (seg < layout.n_docs)
    both = is_doc[:, None] & is_doc[None, :]
    return torch.where(both, pos[None, :] <= pos[:, None], idx[None, :] <= idx[:, None])


def check_concentric(attn: Attention) -> None:
    """Raise ValueError unless the layer is causal self-attention without a window (the layouts CCA re-lays)."""
    if attn.site.cross or not attn.site.causal or attn.cfg.window is not None:
        raise ValueError("cca: only causal self-attention without a window is supported")


@contextmanager
def concentric(model: nn.Module) -> Iterator[None]:
    """Within the block, no attention layer of ``model`` applies its own causal rule: the caller's mask is the
    whole rule (it must contain causality itself, as ``cca_visible`` does). The layers are restored afterwards."""
    layers = [m for m in model.modules() if isinstance(m, Attention)]
    if not layers:
        raise ValueError("cca: the model has no attnlab Attention layer")
    for attn in layers:
        check_concentric(attn)
    sites = [attn.site for attn in layers]
    try:
        for attn, site in zip(layers, sites, strict=True):
            attn.site = dataclasses.replace(site, causal=False)
        yield
    finally:
        for attn, site in zip(layers, sites, strict=True):
            attn.site = site


def cca_logits(model: nn.Module, tokens: Tensor, layout: PineLayout) -> Tensor:
    """tokens [B, T] laid out as ``layout`` → the model's logits [B, T, V] with concentric positions and mask."""
    if tokens.shape[-1] != layout.total:
        raise ValueError(f"cca: the input has {tokens.shape[-1]} tokens, the layout {layout.total}")
    positions = cca_positions(layout, tokens.device).expand(tokens.shape[0], -1)
    visible = cca_visible(layout, tokens.device)
    mask = AttentionMask(visible=visible[None, None])
    # lift the causal rule only where the mask shows a later key: a layout the causal rule holds (one document)
    # then runs the core's own call, which drops index positions and a mask that hides nothing more (bitwise)
    later = bool((visible & ~torch.ones_like(visible).tril()).any())
    with concentric(model) if later else contextlib.nullcontext():
        return model(tokens, position_ids=positions, attention_mask=mask)
