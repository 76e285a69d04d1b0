"""softmax1: softmax with +1 in the denominator, an attnlab plugin registered through the entry point
``attnlab.plugins`` (see pyproject.toml).

    w_ij = exp(s_ij) / (1 + Σ_{j' visible} exp(s_ij'))

A query may attend to nothing: the +1 is a key with score 0 and value 0 (the "zero sink" of Xiao et al. 2023,
"Efficient Streaming Language Models with Attention Sinks", arXiv:2309.17453). Rows sum to less than 1.

Fast path: with S = Σ exp(s) = exp(lse), softmax1 = softmax · S / (1 + S) = softmax · σ(lse), so the chunked
backend runs attnlab's softmax tiles (which also return the rows' log-sum-exp, differentiably) and scales each row.
The rule is a subclass of ``SoftmaxRule`` of its own: the compiled CPU kernels return no differentiable
log-sum-exp, and they only take softmax's own rule, so the dispatch table keeps this one on the PyTorch tiles.
"""

from __future__ import annotations

import torch
from torch import Tensor

from attnlab.attention.core import AttnOutput, compute_dtype
from attnlab.attention.fast.chunked import chunked_attention
from attnlab.attention.fast.rule_softmax import SoftmaxRule
from attnlab.attention.normalisers.base import NORMALISERS, NoParams
from attnlab.attention.normalisers.tiled import TiledNormaliser


class Softmax1Rule(SoftmaxRule):
    """Softmax's tiles, asked for the rows' log-sum-exp."""


@NORMALISERS.register(
    "softmax1",
    summary="softmax with +1 in the denominator: a query may attend to nothing",
    paper="Xiao et al. 2023, arXiv:2309.17453 (zero sink)",
    params=NoParams,
    backends=("reference", "chunked"),
)
class Softmax1(TiledNormaliser):
    def __init__(self, params: NoParams | None = None, site: object | None = None):
        super().__init__()

    def forward(self, scores: Tensor, mask: Tensor | None) -> Tensor:
        s = scores.to(compute_dtype(scores))
        if mask is not None:
            s = s.masked_fill(~mask, float("-inf"))
        m = s.amax(-1, keepdim=True).clamp(min=0)  # the +1 is exp(0): shift by max(0, row max)
        e = (s - m).exp()
        return e / ((-m).exp() + e.sum(-1, keepdim=True))

    def chunked_rule(self) -> Softmax1Rule:
        return Softmax1Rule()

    def attend_chunked(self, q: Tensor, k: Tensor, v: Tensor, **kw: object) -> AttnOutput:
        kw.pop("normaliser", None)
        kw.pop("raw_qk", None)
        out, lse = chunked_attention(q, k, v, self.chunked_rule(), need_lse=True, **kw)  # type: ignore[arg-type]
        return AttnOutput(out * torch.sigmoid(lse)[..., None].to(out.dtype), None, None)
