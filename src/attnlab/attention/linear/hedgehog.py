"""Hedgehog: linear attention with a learnable, spiky feature map (Zhang, Bhatia, Kumbong, Ré, "The Hedgehog
& the Porcupine: Expressive Linear Attentions with Softmax Mimicry", ICLR 2024, arXiv:2402.04347).

    z = x W_h + b_h                      per head, W_h: d_head × d_f, separate (untied) maps for q and k
    φ(z) = [softmax(z), softmax(−z)]     over the d_f features, clamped at 1e-6 → 2·d_f features
    a_ij = φ(q_i)·φ(k_j) / (Σ_{j' visible} φ(q_i)·φ(k_j') + ε)      (no 1/√d)

The paper's normalised form (the Based code's mixer skips the denominator by default; we keep it), so rows
are row-stochastic. Training recipe: attention distillation, the soft cross-entropy between the softmax rows
softmax(q kᵀ/√d) of a frozen teacher and a (``hedgehog_distillation_loss``). ``distill_weight > 0`` adds it
as the module's ``aux_loss`` in training mode, with q, k detached so only the feature maps learn from it;
``Hedgehog.distillation_loss(q, k)`` gives it for any q, k. With grouped keys (GQA) each key/value head
takes the key map of the first query head of its group.

Source: the authors' code, HazyResearch/based ``based/models/mixers/hedgehog.py``, read in the repository:
``SoftmaxDim`` is [softmax(x), softmax(−x)] over the feature dimension, clamped at ``eps`` (1e-12 there; 1e-6
here, ``feature_eps``); the maps are ``UntiedHeadEinsumMLP`` (one d_head × d_f matrix per head, kaiming-
uniform init) and the key map is a ``copy.deepcopy`` of the query map, so both start from one init; the
mixer's ``use_norm`` is False (no denominator). HazyResearch/lolcats ``src/model/feature_map.py`` has the same
``SoftmaxDim``. Unverified: the paper's own map (arXiv:2402.04347, §4) was not read here; it may be the
elementwise [exp(z), exp(−z)] form rather than this softmax form. The init offered here is nn.Linear's
uniform, or identity.
"""

from __future__ import annotations

import copy
import math
from typing import Literal

from pydantic import Field
from torch import Tensor

from attnlab.attention.core import build_mask, repeat_kv
from attnlab.attention.linear.base import SCAN_BACKENDS, ScanKernelAttention, ScanParams
from attnlab.attention.linear.feature_maps import HedgehogFeatureMap, hedgehog_distillation_loss
from attnlab.attention.normalisers.base import NORMALISERS


class HedgehogParams(ScanParams):
    feature_dim: int | None = Field(None, gt=0)  # d_f; None: d_head
    init: Literal["linear", "identity"] = "linear"
    feature_eps: float = Field(1e-6, gt=0)  # clamp of the softmax features
    distill_weight: float = Field(0.0, ge=0)  # > 0: aux_loss = weight · distillation loss (training mode only)


@NORMALISERS.register(
    "hedgehog",
    summary="linear attention with learnable per-head map [softmax(xW), softmax(−xW)]",
    paper="Zhang et al. 2024, arXiv:2402.04347",
    params=HedgehogParams,
    example={"feature_dim": 8, "chunk_size": 8},
    row_stochastic=True,
    backends=SCAN_BACKENDS,
    score_mod=False,
    kernel=True,
)
class Hedgehog(ScanKernelAttention):
    name = "hedgehog"
    params: HedgehogParams

    def __init__(self, params: HedgehogParams | None = None, site: object | None = None):
        super().__init__(params or HedgehogParams(), site)
        if self.d_head < 1:
            raise ValueError("hedgehog needs a site with n_heads and d_head (its feature maps are per head)")
        p = self.params
        self.q_map = HedgehogFeatureMap(self.n_heads, self.d_head, p.feature_dim or self.d_head, p.init, p.feature_eps)
        self.k_map = copy.deepcopy(self.q_map)  # untied, from the same init (the authors' deepcopy)
        self.causal = bool(getattr(site, "causal", True)) and not bool(getattr(site, "cross", False))
        self.aux_loss: Tensor | None = None

    def features(self, q: Tensor, k: Tensor, scale: float | None) -> tuple[Tensor, Tensor, float | None]:
        self.aux_loss = None
        if self.training and self.params.distill_weight > 0:
            self.aux_loss = self.params.distill_weight * self.distillation_loss(q.detach(), k.detach())
        return self.q_map(q if scale is None else q * scale), self.k_map(k), 1.0

    def distillation_loss(self, q: Tensor, k: Tensor, causal: bool | None = None) -> Tensor:
        """Soft cross-entropy of this layer's linear rows against softmax(q kᵀ/√d) of the same q, k."""
        causal = self.causal if causal is None else causal
        scores = (q @ repeat_kv(k, q.shape[1] // k.shape[1]).transpose(-1, -2)) / math.sqrt(q.shape[-1])
        mask = build_mask(q.shape[2], k.shape[2], q.device, causal, None)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        teacher = scores.softmax(-1).detach()
        return hedgehog_distillation_loss(teacher, self.q_map(q), self.k_map(k), causal=causal)
