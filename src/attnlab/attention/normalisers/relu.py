"""ReLU attention and squared-ReLU attention: a pointwise map divided by a power of the sequence length.

    relu:   w_ij = ReLU(s_ij)   / L_i^α      α = 1 by default
    relu2:  w_ij = ReLU(s_ij)²  / L_i^α      α = 2 by default, i.e. ReLU(s_ij / L_i)²
            (0 for keys the mask hides)       s_ij = q_i·k_j / √d (the usual scores)

``relu``: Wortsman, Lee, Gilmer, Kornblith, "Replacing softmax with ReLU in Vision Transformers", 2023,
arXiv:2309.08586. The paper's ReLU-attention is φ = L⁻¹·relu applied to q·k/√d, with L the sequence length;
it also sweeps φ = L^−α·h and finds α ≈ 1 best, and reports that without the division accuracy drops.
``alpha`` is that exponent.

``relu2``: the squared ReLU comes from Primer (So et al., "Primer: Searching for Efficient Transformers
for Language Modeling", 2021, arXiv:2109.08668), where it is the feed-forward activation: Primer keeps
softmax attention and has no length scaling to follow. Squared-ReLU *attention* is Hua, Dai, Liu, Le,
"Transformer Quality in Linear Time", 2022, arXiv:2202.10447 (the gated attention unit): the kernel is
relu²(q·k / n + b) with n the sequence length, i.e. the length divides the score inside the square,
which is α = 2 here. GAU's q·k has no 1/√d; ``AttentionConfig(scale=1.0)`` reproduces that.

L_i (``length``): both papers use full (non-causal) attention, where L is the number of keys. For a
causal row the choices are ``"visible"`` (default), the number of keys query i sees, N_i, which equals the
papers' L for full attention and keeps every row's scale independent of its position (lucidrains'
FLASH-pytorch divides causal GAU scores by i + 1, the same choice); or ``"seq_len"``, the fixed training
length from the site (the GAU pseudo-code's ``seq_len``). ``alpha=0`` removes the division.

Backends: ``chunked`` (``attnlab.attention.fast.chunked``): tiles of scores, never the T×T matrix, with a
recomputing backward (ds = p·ReLU(s)^(p−1)·dw / L_i^α).

Not row-stochastic (rows sum to anything ≥ 0, often 0), never negative; masked keys get an exact 0.

Weights are quadratic in the score for relu2: with small scores (early training, small q, k) and α = 2 the
attention is nearly off (row mass ≈ E[relu(s)²] / L).

Verification status: the Wortsman formula (φ = L⁻¹ relu on q·k/√d, the α sweep) is from the paper's text
(ar5iv) and abstract. The GAU form relu²(qk/seq_len + bias) is from two independent re-implementations
of the paper's pseudo-code (JunnYu/FLASHQuad_pytorch, lucidrains/FLASH-pytorch), not from the paper PDF;
note that Wortsman et al. list the earlier squared-ReLU attention among work that does *not* divide by the
sequence length, which disagrees with those re-implementations (``alpha=0`` gives the undivided form).
The choice of N_i for causal rows is ours, not from either paper.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from attnlab.attention.core import compute_dtype, visible_counts
from attnlab.attention.fast.rule_pointwise import PointwiseRule
from attnlab.attention.normalisers.base import NORMALISERS, masked_fill_zero
from attnlab.attention.normalisers.tiled import TiledNormaliser
from attnlab.errors import ConfigError


class ReLUParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    length: Literal["visible", "seq_len"] = "visible"  # L_i: keys query i sees, or the training length
    alpha: float = Field(1.0, ge=0)  # w = ReLU(s)^p / L^alpha (Wortsman et al.: alpha = 1)

    def check_site(self, site, field: str) -> None:
        if self.length == "seq_len" and self.alpha and not site.seq_len:
            raise ConfigError(f"{field}.length", self.length, "needs a site with seq_len", ["visible"])


class ReLU2Params(ReLUParams):
    alpha: float = Field(2.0, ge=0)  # GAU: relu(s / L)² = relu(s)² / L²


class ReLUAttention(TiledNormaliser):
    """w = ReLU(s)^power / L^α on visible keys, exactly 0 elsewhere."""

    power = 1

    def __init__(self, params: ReLUParams | None = None, site: object | None = None):
        super().__init__()
        self.params = params or ReLUParams()
        self.seq_len = getattr(site, "seq_len", None)
        if self.params.length == "seq_len" and self.params.alpha and not self.seq_len:
            raise ValueError("relu attention with length='seq_len' needs a site with seq_len")

    def lengths(self, s: Tensor, mask: Tensor | None) -> Tensor:
        """L_i, broadcastable to the scores: [..., Tq, 1] (visible counts) or a one-element tensor."""
        if self.params.length == "visible":
            return visible_counts(mask, s.shape[-1], s)
        return s.new_full((1, 1), float(self.seq_len or 1))

    def chunked_rule(self) -> PointwiseRule:
        """ReLU(s)^p / L_i^α in tiles of scores."""
        return PointwiseRule("relu", power=self.power, row_scale=self.row_scale if self.params.alpha else None)

    def forward(self, scores: Tensor, mask: Tensor | None) -> Tensor:
        s = scores.to(compute_dtype(scores))
        w = s.relu().pow(self.power) / self.lengths(s, mask).pow(self.params.alpha)
        return masked_fill_zero(w, mask)

    def row_scale(self, counts: Tensor) -> Tensor:
        """1 / L_i^α for the chunked rule, from the visible counts N_i [c, 1] of a block's rows."""
        length = counts if self.params.length == "visible" else counts.new_full((1, 1), float(self.seq_len or 1))
        return length.pow(-self.params.alpha)

    def extra_repr(self) -> str:
        return f"power={self.power}, length={self.params.length}, alpha={self.params.alpha}"


@NORMALISERS.register(
    "relu",
    summary="ReLU(s) / L: pointwise, divided by the sequence length",
    paper="Wortsman et al. 2023, arXiv:2309.08586",
    params=ReLUParams,
    backends=("reference", "chunked"),
)
class ReLU(ReLUAttention):
    power = 1


@NORMALISERS.register(
    "relu2",
    summary="ReLU(s / L)²: squared ReLU, the length inside the square",
    paper="Hua et al. 2022, arXiv:2202.10447 (squared ReLU: So et al. 2021, arXiv:2109.08668)",
    params=ReLU2Params,
    backends=("reference", "chunked"),
)
class ReLU2(ReLUAttention):
    power = 2

    def __init__(self, params: ReLU2Params | None = None, site: object | None = None):
        super().__init__(params or ReLU2Params(), site)
