"""Shared value types at the bottom of the package: every layer may import them, they import nothing of attnlab.

- ``ScoreMod``: a score modification ``(score, b, h, q_idx, kv_idx) -> score`` in FlexAttention's convention
  (PyTorch, ``torch.nn.attention.flex_attention``), written with broadcasting ops so the dense reference can call
  it on whole [B, H, Tq, Tk] grids.
- ``AlibiBias`` and ``RelativeBias``: a position's bias as data (``PositionEncoding.score_bias()``), handed beside its
  score_mod to the paths that apply the bias themselves: the exact SDPA forms (``attnlab.attention.fast.sdpa``)
  and the compiled kernels (``attnlab.attention.fast.native``). A score_mod without such a value is applied
  only by the paths that call it (reference, chunked tiles, flex).
- ``LatentKV``: a latent key/value (MLA / CLLA) handed from ``project`` to ``extend_cache`` and between layers.
- ``AttnOutput`` and ``Normaliser``: what every attention computation returns, and the normaliser's call
  signature (positions that compute attention themselves, 2D-TPE, use them too);
- ``AttentionMask``: a caller's mask (a boolean visibility tensor, document / segment ids, key padding), which the
  attention layer combines with its own causal / window rule (``attnlab.attention.masks``);
- ``compute_dtype``: the dtype attention arithmetic runs in; ``repeat_kv``: the grouped-query layout (query head h
  reads key/value head h // (H / Hkv)).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, NamedTuple, Protocol

import torch
from torch import Tensor

# (score, b, h, q_idx, kv_idx) -> score; the FlexAttention convention, written with broadcasting ops.
ScoreMod = Callable[[Tensor, Tensor, Tensor, Tensor, Tensor], Tensor]


def compute_dtype(x: Tensor) -> torch.dtype:
    """float64 stays float64; everything else is computed in float32 (softmax in bf16 loses rows)."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def repeat_kv(x: Tensor, n_rep: int) -> Tensor:
    """[B, Hkv, T, D] → [B, Hkv * n_rep, T, D]; query head h uses key/value head h // n_rep (GQA)."""
    if n_rep == 1:
        return x
    return x.repeat_interleave(n_rep, dim=1)


class AttnOutput(NamedTuple):
    out: Tensor  # [B, H, Tq, Dv]
    scores: Tensor | None  # [B, H, Tq, Tk] before the normaliser, -inf where masked (None on fused paths)
    weights: Tensor | None  # [B, H, Tq, Tk] after it; may be negative (signed) or not sum to 1
    sink_mass: Tensor | None = None  # [B, H, Tq] weight on extra keys a heads module adds (sinks), detached


class Normaliser(Protocol):
    """Scores → weights. ``mask`` is boolean, True where a key is visible, broadcastable to scores."""

    def __call__(self, scores: Tensor, mask: Tensor | None) -> Tensor: ...


class AlibiBias(NamedTuple):
    """ALiBi as data (Press et al. 2022, arXiv:2108.12409): s_ij += −m_h·(i − j), or −m_h·|i − j| if ``symmetric``."""

    slopes: Tensor  # [H]
    symmetric: bool


class RelativeBias(NamedTuple):
    """A learned bias of the relative position as data (T5: Raffel et al. 2020, arXiv:1910.10683):
    s_ij += table[bucket(j − i), h]."""

    table: Tensor  # [num_buckets, H], learnable
    bucket: Callable[[Tensor], Tensor]  # relative positions j − i (long) → bucket indices (long)


PositionBias = AlibiBias | RelativeBias


class LatentKV(NamedTuple):
    """A compressed key/value (MLA, CLLA: DeepSeek-AI 2024, arXiv:2405.04434): the latent c [B, S, d_c] and the
    head-shared RoPE key [B, S, d_R] before rotation or [B, 1, S, d_R] after it (None when d_R = 0)."""

    c: Tensor
    k_rope: Tensor | None


MaskKind = Literal["padding", "documents", "boolean"]


@dataclass(frozen=True)
class AttentionMask:
    """Which keys each query may see, as the caller gives it; every given part must allow a key (logical and).

    - ``visible``: boolean [B or 1, 1 or H, Tq, Tk], True where query i may see key j;
    - ``documents``: integer [B, Tk] segment / document ids: a query sees only keys of its own segment (the query
      at key index p has the id ``documents[:, p]``: queries are the last Tq keys, as everywhere in attnlab), so
      packed sequences never see each other (``causal=True`` adds causality inside them on a non-causal layer);
    - ``key_padding``: boolean [B, Tk], True for real tokens: padded keys are hidden from every query.

    The layer ands this with its own rule (causal, sliding window), so a decoder's mask never needs to repeat
    causality. A query that sees no key at all gets the output 0 on every path (and weights 0, scores −inf).
    """

    visible: Tensor | None = None
    documents: Tensor | None = None
    key_padding: Tensor | None = None
    causal: bool = False

    def __post_init__(self) -> None:
        if self.visible is None and self.documents is None and self.key_padding is None and not self.causal:
            raise ValueError("AttentionMask needs visible, documents, key_padding or causal=True")
        if self.visible is not None and (self.visible.dim() != 4 or self.visible.dtype != torch.bool):
            raise ValueError(
                f"AttentionMask.visible must be a boolean [B|1, H|1, Tq, Tk] tensor; got {self.visible.dtype} "
                f"{tuple(self.visible.shape)}"
            )
        if self.documents is not None and (self.documents.dim() != 2 or self.documents.is_floating_point()):
            raise ValueError(
                f"AttentionMask.documents must be integer ids [B, Tk]; got {self.documents.dtype} "
                f"{tuple(self.documents.shape)}"
            )
        if self.key_padding is not None and (self.key_padding.dim() != 2 or self.key_padding.dtype != torch.bool):
            raise ValueError(
                f"AttentionMask.key_padding must be boolean [B, Tk] (True: a real token); got "
                f"{self.key_padding.dtype} {tuple(self.key_padding.shape)}"
            )

    @property
    def kind(self) -> MaskKind:
        """What the dispatch table reads: ``boolean`` if any arbitrary part is given, else ``documents``, else
        ``padding`` (a causal flag alone counts as ``documents``: one segment)."""
        if self.visible is not None:
            return "boolean"
        return "documents" if (self.documents is not None or self.causal) else "padding"
