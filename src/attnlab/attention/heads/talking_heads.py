"""Talking-heads attention (Shazeer, Lan, Cheng, Ding, Hou, "Talking-Heads Attention", 2020,
arXiv:2003.02436).

Learned linear maps across the head dimension, just before and just after the normaliser, so that every
head's attention pattern can use every head's logits:

    s_h      = q_h k_hᵀ / √d (+ position score_mod)            [B, H, Tq, Tk], one map per head
    s'_g     = Σ_h P_l[g, h] · s_h                               logits mixed across heads
    w'_g     = Σ_h P_w[g, h] · normaliser(s')_h                  weights mixed across heads
    out_g    = w'_g v_g ;   out = concat_g(out_g) W_o

P_l, P_w ∈ R^{H×H} start as the identity, so a fresh module is exactly multi-head attention with the same
q, k, v, o weights and the mixing is learned as a departure from MHA (TensorFlow Model Garden's layer
draws P_l, P_w from its kernel initializer instead).
The mixing acts within each (query i, key j) cell, so causality and the KV cache are preserved: a masked cell
has weight 0 in every head before the post-mix, hence exactly 0 after it. The logits are mixed *before*
masking (a −inf in one head would turn mixed cells into NaN); the normaliser applies the mask to the mixed
logits. The post-mix may give negative weights and rows that do not sum to 1, whatever the normaliser
(capability ``signed``).

Source followed: TensorFlow Model Garden ``official/nlp/modeling/layers/talking_heads_attention.py``
(read line by line: scores · 1/√d → einsum with ``pre_softmax_weight`` [from, to] → masked softmax →
einsum with ``post_softmax_weight`` → values), which matches the paper's description ("linear projections
across the attention-heads dimension, immediately before and after the softmax"). It stores P as
[from, to]; here P[g, h] maps head h to head g, the transpose. Simplifications: the paper allows different
numbers of query/key heads h_k, logit/weight heads h and value heads h_v; here all are H (``n_kv_heads``
gives GQA for k and v only, repeated to H before the mixing). The mixing composes with any normaliser, not
only softmax. Unverified: the paper's pseudo-code and initialisation were not read here (to be checked
against Shazeer et al., arXiv:2003.02436); its results (better quality at equal heads) are not reproduced.
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from attnlab.attention.core import (
    AttnOutput,
    Normaliser,
    ScoreMod,
    apply_score_mod,
    build_mask,
    compute_dtype,
    normalise,
    repeat_kv,
)
from attnlab.attention.heads.base import HEADS, MultiHead, check_kv_heads


class TalkingHeadsParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    n_kv_heads: int | None = Field(None, gt=0)

    def check_site(self, site, field: str) -> None:
        check_kv_heads(self.n_kv_heads, site, field)


def mix_heads(p: Tensor, x: Tensor) -> Tensor:
    """out_g = Σ_h p[g, h] · x_h for x [B, H, Tq, Tk]."""
    return torch.einsum("gh,bhqk->bgqk", p.to(x.dtype), x)


class TalkingHeads(MultiHead):
    """Multi-head attention with learned H×H mixing of the logits (P_l) and of the weights (P_w)."""

    def __init__(self, d_model: int, n_heads: int, n_kv_heads: int):
        super().__init__(d_model, n_heads, n_kv_heads)
        self.logit_mix = nn.Parameter(torch.eye(n_heads))  # P_l
        self.weight_mix = nn.Parameter(torch.eye(n_heads))  # P_w

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
        mask: Tensor | None = None,
    ) -> AttnOutput:
        """Dense talking-heads attention; q [B, H, Tq, d], k, v [B, Hkv, Tk, d] → out [B, H, Tq, d]."""
        n_rep = q.shape[1] // k.shape[1]
        k, v = repeat_kv(k, n_rep), repeat_kv(v, n_rep)  # the mixing needs all H maps
        scale = q.shape[-1] ** -0.5 if scale is None else scale
        dtype = compute_dtype(q)
        scores = (q.to(dtype) * scale) @ k.to(dtype).transpose(-1, -2)  # [B, H, Tq, Tk]
        if score_mod is not None:
            scores = apply_score_mod(scores, score_mod)
        mixed = mix_heads(self.logit_mix, scores)  # s', still unmasked (finite) here
        mask = build_mask(q.shape[2], k.shape[2], q.device, causal, window) if mask is None else mask
        weights = mix_heads(self.weight_mix, normalise(normaliser, mixed, mask))  # masked cells: Σ P·0 = 0
        out = (weights @ v.to(dtype)).to(v.dtype)  # [B, H, Tq, d]
        shown = mixed if mask is None else mixed.masked_fill(~mask, float("-inf"))
        return AttnOutput(out, shown, weights)


@HEADS.register(
    "talking_heads",
    summary="learned H×H mixing of the logits before the normaliser and of the weights after it",
    paper="Shazeer et al. 2020, arXiv:2003.02436",
    params=TalkingHeadsParams,
    signed=True,
    kernel_ok=False,
)
def build_talking_heads(params: TalkingHeadsParams, site) -> TalkingHeads:
    return TalkingHeads(site.d_model, site.n_heads, params.n_kv_heads or site.n_heads)
