"""Per-token positions and caller masks: one place turns them into what the attention paths compute with.

A caller hands ``Attention.forward`` (and the models above it) ``position_ids`` ([T] or [B, T] integers, may
repeat or go backwards) and an ``attnlab.types.AttentionMask`` (a boolean visibility tensor, document ids, key
padding). Here:

- ``resolve_positions``: validates the ids; ids equal to ``arange`` become None, so the layer runs exactly today's
  computation (same path, bitwise the same output);
- ``layer_mask``: the caller's mask and-ed with the layer's own rule (``core.build_mask``: causal, window) as one
  dense boolean [B|1, H|1, Tq, Tk]; None when it hides nothing the rule shows (again today's computation);
- ``guard_empty``: a query that sees no key. Softmax of an all −inf row is 0/0 (NaN, and SDPA returns NaN too), so
  the paths compute such a row as if it saw every key and the layer then sets its output to 0 (weights 0, scores
  −inf). The same on every path; gradients through it are 0, never NaN;
- ``mask_blocks``: the block form of a mask for the tile paths: each (query block, key block) tile is hidden (0),
  partial (1) or fully visible (2), so hidden tiles are never computed and full ones are never masked;
- ``positional_score_mod``: a position's score_mod (ALiBi, T5) at the caller's positions instead of the index
  grid, as a score_mod again, so every path that calls a score_mod (reference, tiles, flex, heads) honours them.
"""

from __future__ import annotations

import torch
from torch import Tensor

from attnlab.attention.core import build_mask
from attnlab.types import AttentionMask, ScoreMod

HIDDEN, PARTIAL, FULL = 0, 1, 2


def as_attention_mask(mask: AttentionMask | Tensor | None) -> AttentionMask | None:
    """A caller's mask as an ``AttentionMask``: a 2-D tensor is key padding [B, Tk] (Hugging Face's
    ``attention_mask``: 1 / True for real tokens), a 3-D or 4-D boolean one is ``visible`` ([B, Tq, Tk] or
    [B|1, H|1, Tq, Tk])."""
    if mask is None or isinstance(mask, AttentionMask):
        return mask
    if not isinstance(mask, Tensor):
        raise TypeError(f"attention_mask must be an AttentionMask or a tensor; got {type(mask).__name__}")
    if mask.dim() == 2:
        return AttentionMask(key_padding=mask != 0)
    if mask.dim() in (3, 4) and mask.dtype == torch.bool:
        return AttentionMask(visible=mask[:, None] if mask.dim() == 3 else mask)
    raise ValueError(
        f"attention_mask={mask.dtype} {tuple(mask.shape)}: allowed: key padding [B, Tk], boolean [B, Tq, Tk] or "
        "[B|1, H|1, Tq, Tk], or an attnlab.types.AttentionMask"
    )


def resolve_positions(position_ids: Tensor | None, start: int, t: int, batch: int) -> Tensor | None:
    """Validated position ids ([T] or [B, T], long), or None where they equal start … start + T − 1 in every row."""
    if position_ids is None:
        return None
    if position_ids.is_floating_point() or position_ids.dim() not in (1, 2) or position_ids.shape[-1] != t:
        raise ValueError(
            f"position_ids={position_ids.dtype} {tuple(position_ids.shape)}: allowed: integers [T] or [B, T] with T={t}"
        )
    if position_ids.dim() == 2 and position_ids.shape[0] not in (1, batch):
        raise ValueError(f"position_ids batch {position_ids.shape[0]}: allowed: 1 or {batch}")
    arange = torch.arange(start, start + t, device=position_ids.device)
    if bool((position_ids == arange).all()):
        return None
    if position_ids.dim() == 2 and bool((position_ids == position_ids[:1]).all()):
        position_ids = position_ids[0]
    return position_ids.long()


def _check(name: str, t: Tensor, shape: tuple[int, ...], allowed: str) -> None:
    ok = t.dim() == len(shape) and all(a in (1, b) if b != -1 else True for a, b in zip(t.shape, shape, strict=True))
    if not ok:
        raise ValueError(f"AttentionMask.{name} has shape {tuple(t.shape)}; allowed: {allowed}")


def dense_mask(
    mask: AttentionMask, t_q: int, t_k: int, device: torch.device, *, causal: bool, window: int | None
) -> Tensor:
    """The caller's mask and the layer's rule as one boolean [B|1, H|1, Tq, Tk], True where a key is visible."""
    rule = build_mask(t_q, t_k, device, causal or mask.causal, window)
    parts: list[Tensor] = [] if rule is None else [rule[None, None]]
    if mask.visible is not None:
        v = mask.visible
        if v.shape[-2:] != (t_q, t_k):
            raise ValueError(f"AttentionMask.visible has shape {tuple(v.shape)}; allowed: [B|1, H|1, {t_q}, {t_k}]")
        parts.append(v.to(device))
    for name, ids in (("documents", mask.documents), ("key_padding", mask.key_padding)):
        if ids is not None and ids.shape[-1] != t_k:
            raise ValueError(f"AttentionMask.{name} has shape {tuple(ids.shape)}; allowed: [B, {t_k}] (every key)")
    if mask.documents is not None:
        if t_q > t_k:
            raise ValueError(f"AttentionMask.documents needs Tq <= Tk (queries are the last keys); got {t_q} > {t_k}")
        docs = mask.documents.to(device)
        parts.append((docs[:, t_k - t_q :, None] == docs[:, None, :])[:, None])
    if mask.key_padding is not None:
        parts.append(mask.key_padding.to(device)[:, None, None, :])
    out = parts[0]
    for p in parts[1:]:
        out = out & p
    return out.expand(*out.shape[:2], t_q, t_k)  # key padding alone is [B, 1, 1, Tk]: every query row, as a view


def layer_mask(
    mask: AttentionMask | None, t_q: int, t_k: int, device: torch.device, *, causal: bool, window: int | None
) -> Tensor | None:
    """``dense_mask``, or None where the caller's mask hides no key the layer's own rule shows (today's call)."""
    if mask is None:
        return None
    visible = dense_mask(mask, t_q, t_k, device, causal=causal, window=window)
    rule = build_mask(t_q, t_k, device, causal, window)
    if bool((visible if rule is None else visible | ~rule).all()):
        return None
    return visible


def guard_empty(visible: Tensor) -> tuple[Tensor, Tensor | None]:
    """(the mask every path computes with, the rows [B|1, H|1, Tq, 1] that see no key or None).

    A row that sees nothing is computed as if it saw every key (finite, no NaN in forward or backward) and the
    layer zeroes its output afterwards (``zero_empty``)."""
    empty = ~visible.any(-1, keepdim=True)
    if not bool(empty.any()):
        return visible, None
    return visible | empty, empty


def mask_blocks(visible: Tensor, q_block: int, k_block: int) -> Tensor:
    """The block form of a mask [..., Tq, Tk]: int8 [ceil(Tq / q_block), ceil(Tk / k_block)], for each tile of
    ``q_block`` queries × ``k_block`` keys HIDDEN (0: no entry visible, in any batch row or head), FULL (2: every
    entry visible) or PARTIAL (1). Tiles at the edges are as large as what is left."""
    t_q, t_k = visible.shape[-2:]
    flat = visible.reshape(-1, t_q, t_k)
    n_q, n_k = -(-t_q // q_block), -(-t_k // k_block)
    pad = (0, n_k * k_block - t_k, 0, n_q * q_block - t_q)
    tiles = flat.view(torch.uint8)
    anyv = torch.nn.functional.pad(tiles, pad, value=0).view(-1, n_q, q_block, n_k, k_block)
    allv = torch.nn.functional.pad(tiles, pad, value=1).view(-1, n_q, q_block, n_k, k_block)
    seen = anyv.amax(dim=(0, 2, 4)).bool()
    full = allv.amin(dim=(0, 2, 4)).bool()
    return torch.where(full, FULL, torch.where(seen, PARTIAL, HIDDEN)).to(torch.int8)


def positional_score_mod(score_mod: ScoreMod, key_positions: Tensor) -> ScoreMod:
    """``score_mod`` at the caller's positions: index q_idx, kv_idx (both in key index space: queries are the last
    Tq keys) are replaced by ``key_positions[b, ·]`` ([B|1, Tk] long). The wrapped score_mod stays in the closure,
    so the tiles still find its learnable tensors (T5's table)."""
    pos = key_positions if key_positions.dim() == 2 else key_positions[None]

    def at_positions(score: Tensor, b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        rows = b if pos.shape[0] > 1 else torch.zeros_like(b)
        return score_mod(score, b, h, pos[rows, q_idx], pos[rows, kv_idx])

    return at_positions


def zero_empty(x: Tensor | None, empty: Tensor | None, value: float = 0.0) -> Tensor | None:
    """Rows that see no key set to ``value`` (outputs and weights 0, scores −inf); the identity without such rows."""
    if x is None or empty is None:
        return x
    if empty.shape[1] not in (1, x.shape[1]):  # fewer output heads than mask heads (differential pairs): a head's
        empty = empty.view(empty.shape[0], x.shape[1], -1, *empty.shape[2:]).all(2)  # row is empty if all its maps are
    return x.masked_fill(empty, value)
