"""Lightning attention, the token mixer of TransNormerLLM (Qin et al., "TransNormerLLM: A Faster and Better
Large Language Model with Improved TransNormer", arXiv:2307.14995; "Lightning Attention-2: A Free Lunch for
Handling Unlimited Sequence Lengths in Large Language Models", arXiv:2401.04658).

    O = [(Q Kᵀ) ⊙ D] V          D_ij = λ_h^{i−j} for j ≤ i, else 0;   λ_h = exp(−slope_h)
    slope_h = ALiBi slopes (2^{−8/H})^{h+1}, times TNL's depth factor (1 − l/(L−1) + 1e-5) at layer l of L
    out = SimpleRMSNorm(O) = O / √(mean(O²) + 1e-6)         no weight; then the heads module's Wo

No softmax, no 1/√d (``scale``, when given, multiplies q), no denominator: weights are signed and rows do not
sum to 1; the decay and the output norm are what keep the output bounded. The norm lives in ``attend`` (all
three backends apply it; ``output_norm="none"`` removes it), because the heads module applies Wo right after
and has no norm of its own. Default: over all heads of a token, as the authors' TNL module normalises the
concatenated heads (``nn.LayerNorm(embed_dim)`` in lightning-attention's ``examples/module/tnl_attn.py``;
the TransNormerLLM paper's SimpleRMSNorm, unverified here against arXiv:2307.14995); ``"per_head"``
normalises over d_head. TNL's SiLU on q, k, v and its sigmoid output gate belong to the heads axis
(``heads="gated"`` is the gate) and are not applied here.

Backends: ``reference`` (dense D), ``recurrent`` (S_t = λ S_{t−1} + k_t v_tᵀ), ``chunked`` (the Lightning-2
tiling: intra-chunk left product with block-local decay, inter-chunk state). Non-causal use takes the
symmetric decay λ^{|i−j|} (an attnlab extension; the papers are causal). The decay is relative, so no cross.

Source: OpenNLPLab/lightning-attention, ``lightning_attn/ops/torch/linear_attention.py`` (the torch
reference), ``lightning_attn/utils/utils.py`` (``_build_slope_tensor``, the ALiBi slopes) and
``examples/module/tnl_attn.py`` (depth factor, norm placement), read in the repository; ``decay=False`` sets
every slope to 0 (TNL's no-decay ablation).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import Tensor

from attnlab.attention.linear.base import SCAN_BACKENDS, ScanKernelAttention, ScanParams, rms_normalise
from attnlab.attention.normalisers.base import NORMALISERS


class LightningParams(ScanParams):
    decay: bool = True  # False: every slope 0, plain (Q Kᵀ ⊙ M) V
    depth_scaling: bool = True  # TNL: slope · (1 − l/(L−1) + 1e-5), weaker decay in deeper layers
    output_norm: Literal["all_heads", "per_head", "none"] = "all_heads"
    norm_eps: float = Field(1e-6, gt=0)


def tnl_slopes(n_heads: int, layer_idx: int, n_layers: int, depth_scaling: bool = True) -> Tensor:
    """ALiBi's per-head slopes, scaled by TNL's (1 − l/(L−1) + 1e-5); a one-layer model keeps factor 1 + 1e-5."""
    from attnlab.position.alibi import alibi_slopes  # here, not at the top: position imports attention.core

    slopes = alibi_slopes(n_heads)
    if depth_scaling:
        depth = layer_idx / (n_layers - 1) if n_layers > 1 else 0.0
        slopes = slopes * (1.0 - depth + 1e-5)
    return slopes


@NORMALISERS.register(
    "lightning",
    summary="Lightning / TransNormerLLM: (QKᵀ ⊙ λ^{i−j}) V, no denominator, SimpleRMSNorm",
    paper="Qin et al. 2024, arXiv:2401.04658 (TNL: arXiv:2307.14995)",
    params=LightningParams,
    example={"chunk_size": 8},
    signed=True,
    cross=False,
    backends=SCAN_BACKENDS,
    score_mod=False,
    kernel=True,
)
class Lightning(ScanKernelAttention):
    name = "lightning"
    rows = "none"
    params: LightningParams

    def __init__(self, params: LightningParams | None = None, site: object | None = None):
        super().__init__(params or LightningParams(), site)
        p = self.params
        layer, n_layers = int(getattr(site, "layer_idx", 0)), int(getattr(site, "n_layers", 1))
        slopes = tnl_slopes(self.n_heads, layer, n_layers, p.depth_scaling) if p.decay else torch.zeros(self.n_heads)
        self.register_buffer("slopes", slopes.float(), persistent=False)

    def features(self, q: Tensor, k: Tensor, scale: float | None) -> tuple[Tensor, Tensor, float | None]:
        return q, k, (1.0 if scale is None else scale)

    def output_norm(self, out: Tensor) -> Tensor:
        if self.params.output_norm == "none":
            return out
        return rms_normalise(out, self.params.output_norm == "per_head", self.params.norm_eps)
