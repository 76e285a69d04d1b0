"""Softmax attention (Vaswani et al., "Attention Is All You Need", 2017, arXiv:1706.03762).

    w_ij = exp(s_ij) / Σ_{j' visible} exp(s_ij')        s_ij = q_i·k_j / √d

Row-stochastic. ``softcap`` c: logit soft-capping s ← c·tanh(s / c) before the mask (Gemma 2: Gemma Team 2024,
arXiv:2408.00118, c = 50 in attention), which keeps logits in (−c, c).

Backends, none of which returns weights:
- ``sdpa``: PyTorch's fused kernel (not with ``softcap``, which it cannot apply). With a position score_mod
  that has an exact SDPA form (ALiBi, T5 bias: ``attend_sdpa``, see ``attnlab.attention.fast.sdpa_variants``)
  the layer runs that on ``sdpa``; other score_mods use the reference;
- ``auto``: plain softmax is SDPA; on CPU, soft-capping, ALiBi and T5 run on ``chunked``'s compiled kernels
  (``native_auto``: faster than the SDPA forms), elsewhere or without the kernels as on ``sdpa`` (soft-capping:
  the reference);
- ``chunked``: tiles of scores with an online normaliser and a recomputing backward (O(T·chunk) memory);
  honours a position's score_mod (ALiBi, T5 bias) and differentiates its learnable tensors. On CPU it runs the
  compiled kernels (``attnlab.attention.fast.native``) for soft-capping and ALiBi / T5 biases;
- ``flex``: compiled FlexAttention (``attnlab.attention.fast.flex``) with the score_mod, soft-capping and a
  block mask for causal / sliding-window attention. On CPU, torch 2.13's flex has no backward and no
  logsumexp, so gradients come from the chunked backward; KV-cache decoding and float64 use ``chunked``.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from attnlab.attention.core import AttnOutput, ScoreMod, attend_reference, compute_dtype
from attnlab.attention.fast.chunked import SoftmaxRule
from attnlab.attention.normalisers.base import NORMALISERS, NormaliserBase


class SoftmaxParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    softcap: float | None = Field(None, gt=0)  # logit soft-capping c·tanh(s / c) (Gemma 2: 50); None: off


@NORMALISERS.register(
    "softmax",
    summary="softmax over visible keys",
    paper="Vaswani et al. 2017, arXiv:1706.03762",
    params=SoftmaxParams,
    row_stochastic=True,
    backends=("reference", "sdpa", "chunked", "flex"),
)
class Softmax(NormaliserBase):
    def __init__(self, params: SoftmaxParams | None = None, site: object | None = None):
        super().__init__()
        self.softcap = (params or SoftmaxParams()).softcap
        self.sdpa_ok = self.softcap is None  # SDPA cannot soft-cap: the layer falls back to the reference

    def chunked_rule(self) -> SoftmaxRule:
        """Softmax in tiles with an online normaliser (FlashAttention's algorithm in PyTorch ops)."""
        return SoftmaxRule(softcap=self.softcap)

    def forward(self, scores: Tensor, mask: Tensor | None) -> Tensor:
        s = scores.to(compute_dtype(scores))
        if self.softcap is not None:
            s = (s / self.softcap).tanh() * self.softcap
        if mask is not None:
            s = s.masked_fill(~mask, float("-inf"))
        return s.softmax(dim=-1)

    def attend_sdpa(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        *,
        normaliser: object = None,
        score_mod: ScoreMod | None = None,
        causal: bool = True,
        scale: float | None = None,
        window: int | None = None,
    ) -> AttnOutput:
        """PyTorch's SDPA with the score_mod's exact reformulation (ALiBi, T5 bias). A T5 bias too long to
        materialise goes to the chunked path (O(T) memory); without a form, or with soft-capping, the reference."""
        from attnlab.attention.fast.sdpa_variants import has_sdpa_form, sdpa_form, softmax_sdpa

        if self.softcap is None and has_sdpa_form(score_mod, q, k.shape[2], window):
            out = softmax_sdpa(q, k, v, score_mod=score_mod, causal=causal, scale=scale, window=window)
            return AttnOutput(out, None, None)
        kwargs = dict(score_mod=score_mod, causal=causal, scale=scale, window=window)
        if self.softcap is None and sdpa_form(score_mod) is not None:
            return self.attend_chunked(q, k, v, **kwargs)
        return attend_reference(q, k, v, normaliser=self, **kwargs)

    def native_auto(self, score_mod: ScoreMod | None) -> bool:
        """Whether backend auto runs this softmax on the compiled CPU kernels (``attnlab.attention.fast.native``):
        with soft-capping (else the reference: SDPA cannot cap) or an ALiBi / T5 bias (faster than their SDPA
        forms: the README's speed table), when the kernels are available."""
        from attnlab.attention.fast import native
        from attnlab.attention.fast.sdpa_variants import sdpa_form

        if score_mod is not None and sdpa_form(score_mod) is None:
            return False
        if self.softcap is None and score_mod is None:
            return False  # plain softmax: SDPA itself
        return native.available()

    def attend_flex(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        *,
        normaliser: object = None,
        score_mod: ScoreMod | None = None,
        causal: bool = True,
        scale: float | None = None,
        window: int | None = None,
    ) -> AttnOutput:
        """Softmax through compiled FlexAttention (score_mod, soft-capping, window as a block mask)."""
        from attnlab.attention.fast.flex import flex_softmax  # imports torch's flex machinery on first use

        out, _ = flex_softmax(
            q, k, v, score_mod=score_mod, causal=causal, scale=scale, window=window, softcap=self.softcap
        )
        return AttnOutput(out, None, None)

    def extra_repr(self) -> str:
        return "" if self.softcap is None else f"softcap={self.softcap}"
