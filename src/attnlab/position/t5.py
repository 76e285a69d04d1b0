"""T5 relative position bias (Raffel et al., "Exploring the Limits of Transfer Learning with a Unified Text-to-Text
Transformer", JMLR 2020, arXiv:1910.10683).

    s_ij ← s_ij + B[bucket(j − i), h]          B ∈ R^{num_buckets × H}, learned

bucket(r), with n_b = num_buckets, D = max_distance:

    bidirectional (non-causal): n_b ← n_b / 2;  offset = n_b if r > 0 else 0;  n = |r|
    causal:                     offset = 0;  n = max(−r, 0)          (keys in the future share bucket 0)
    exact = n_b / 2
    bucket = offset + n                                                    if n < exact
           = offset + min(exact + ⌊ln(n / exact) / ln(D / exact) · (n_b − exact)⌋, n_b − 1)   otherwise

so half of the buckets are exact distances and the other half grow logarithmically up to D; every distance
beyond D shares the last bucket. The log is taken in float32, as in the Mesh-TensorFlow and Hugging Face code
(``T5Attention._relative_position_bucket``, read), so bucket boundaries match T5 checkpoints.

Differences from T5: T5 has no 1/√d on q·k (it is folded into the initialisation) — here the bias is added to
the scaled scores; T5 computes the bias in the first layer and reuses it in every layer — here each layer has
its own table (initialised N(0, d_model^{−1/2}) as in HF). The bias depends on j − i only, so KV-cache decoding
is exact; it is relative, so cross-attention is not supported.

``score_bias()`` hands the same bias over as data (``attnlab.types.RelativeBias``: the table and the bucket function),
from which ``attnlab.attention.fast.sdpa`` runs it through PyTorch's fused SDPA kernel with the table's gradient
and ``attnlab.attention.fast.native`` through the compiled CPU kernels.
"""

from __future__ import annotations

import functools
import math

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from attnlab.position.base import POSITIONS, PositionEncoding
from attnlab.types import RelativeBias, ScoreMod


class T5Params(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    num_buckets: int = Field(32, ge=2)
    max_distance: int = Field(128, ge=2)


def relative_position_bucket(
    relative_position: Tensor, bidirectional: bool, num_buckets: int = 32, max_distance: int = 128
) -> Tensor:
    """T5's bucket of a relative position r = key − query (integer tensor of any shape) → long tensor."""
    if bidirectional:
        num_buckets //= 2
        offset = (relative_position > 0).long() * num_buckets
        n = relative_position.abs()
    else:
        offset = torch.zeros_like(relative_position, dtype=torch.long)
        n = (-relative_position).clamp(min=0)
    max_exact = num_buckets // 2
    # clamp(min=1): the log of 0 is never selected (n < max_exact there), but −inf cast to long is undefined
    ratio = n.clamp(min=1).float() / max_exact
    large = max_exact + (torch.log(ratio) / math.log(max_distance / max_exact) * (num_buckets - max_exact)).long()
    large = large.clamp(max=num_buckets - 1)
    return offset + torch.where(n < max_exact, n.long(), large)


@POSITIONS.register(
    "t5",
    summary="learned per-head bias of the bucketed relative position (T5)",
    paper="Raffel et al. 2020, arXiv:1910.10683",
    params=T5Params,
    cross=False,
    needs_score_mod=True,
)
class T5RelativeBias(PositionEncoding):
    def __init__(self, params: T5Params | None = None, site: object | None = None):
        super().__init__()
        params = params or T5Params()
        self.num_buckets, self.max_distance = params.num_buckets, params.max_distance
        self.bidirectional = not bool(getattr(site, "causal", True))
        n_heads, d_model = int(site.n_heads), int(site.d_model)  # type: ignore[union-attr]
        # a bare Parameter, not nn.Embedding: the model's GPT-2 init (std 0.02) re-draws every Embedding
        self.bias = nn.Parameter(torch.randn(params.num_buckets, n_heads) * d_model**-0.5)  # [buckets, H]

    def score_mod(self) -> ScoreMod:
        table, bidirectional = self.bias, self.bidirectional
        num_buckets, max_distance = self.num_buckets, self.max_distance

        def t5_bias(score: Tensor, b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
            bucket = relative_position_bucket(kv_idx - q_idx, bidirectional, num_buckets, max_distance)
            return score + table[bucket, h].to(score.dtype)

        return t5_bias

    def score_bias(self) -> RelativeBias:
        bucket_of = functools.partial(
            relative_position_bucket,
            bidirectional=self.bidirectional,
            num_buckets=self.num_buckets,
            max_distance=self.max_distance,
        )
        return RelativeBias(self.bias, bucket_of)
