"""Softmax attention (Vaswani et al., "Attention Is All You Need", 2017, arXiv:1706.03762).

    w_ij = exp(s_ij) / Σ_{j' visible} exp(s_ij')        s_ij = q_i·k_j / √d

Row-stochastic. ``softcap`` c: logit soft-capping s ← c·tanh(s / c) before the mask (Gemma 2: Gemma Team 2024,
arXiv:2408.00118, c = 50 in attention), which keeps logits in (−c, c).

Backends, none of which returns weights (which of them computes a layer is the dispatch table's choice,
``attnlab.attention.dispatch``; each method below computes and never falls back):
- ``sdpa``: PyTorch's fused kernel (not with ``softcap``, which it cannot apply); ``attend_sdpa`` runs the exact
  SDPA form of a position's typed bias (ALiBi, T5: ``attnlab.attention.fast.sdpa_variants``);
- ``chunked``: tiles of scores with an online normaliser and a recomputing backward (O(T·chunk) memory);
  honours a position's score_mod (ALiBi, T5 bias) and differentiates its learnable tensors; on CPU the same
  algorithm compiled (``attnlab.attention.fast.native``) for soft-capping and ALiBi / T5 biases;
- ``flex``: compiled FlexAttention (``attnlab.attention.fast.flex``) with the score_mod, soft-capping and a
  block mask for causal / sliding-window attention. On CPU, torch 2.13's flex has no backward and no
  logsumexp, so gradients come from the chunked backward; KV-cache decoding and float64 are not flex's.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from attnlab.attention.core import AttnOutput, ScoreMod, compute_dtype
from attnlab.attention.fast.rule_softmax import SoftmaxRule
from attnlab.attention.normalisers.base import NORMALISERS
from attnlab.attention.normalisers.tiled import TiledNormaliser
from attnlab.types import PositionBias


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
class Softmax(TiledNormaliser):
    def __init__(self, params: SoftmaxParams | None = None, site: object | None = None):
        super().__init__()
        self.softcap = (params or SoftmaxParams()).softcap
        self.sdpa_ok = self.softcap is None  # SDPA cannot soft-cap: the dispatch table never sends it there

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
        bias: PositionBias | None = None,
        causal: bool = True,
        scale: float | None = None,
        window: int | None = None,
    ) -> AttnOutput:
        """PyTorch's SDPA with a position's typed bias as its exact reformulation (ALiBi, T5 bias), or none."""
        from attnlab.attention.fast.sdpa_variants import softmax_sdpa

        if self.softcap is not None:
            raise ValueError(f"SDPA cannot soft-cap (softcap={self.softcap}); use backend chunked, flex or reference")
        return AttnOutput(softmax_sdpa(q, k, v, bias=bias, causal=causal, scale=scale, window=window), None, None)

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
        mask: Tensor | None = None,
    ) -> AttnOutput:
        """Softmax through compiled FlexAttention (score_mod, soft-capping, window as a block mask; ``mask``, a
        boolean [B|1, H|1, Tq, Tk] with the rule folded in, as a mask_mod read from the tensor)."""
        from attnlab.attention.fast.flex import compiled_flex_softmax  # imports torch's flex machinery on first use

        out, _ = compiled_flex_softmax(
            q, k, v, score_mod=score_mod, causal=causal, scale=scale, window=window, softcap=self.softcap, mask=mask
        )
        return AttnOutput(out, None, None)

    def extra_repr(self) -> str:
        return "" if self.softcap is None else f"softcap={self.softcap}"
