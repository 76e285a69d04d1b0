"""Linear attention with φ = elu + 1 (Katharopoulos, Vyas, Pappas, Fleuret, "Transformers are RNNs: Fast
Autoregressive Transformers with Linear Attention", ICML 2020, arXiv:2006.16236).

    φ(x) = elu(x) + 1 > 0                              (no 1/√d: ``scale``, when given, multiplies q before φ)
    a_ij = φ(q_i)·φ(k_j) / (Σ_{j' visible} φ(q_i)·φ(k_j') + ε)
    causal, as an RNN:  S_i = S_{i−1} + φ(k_i) v_iᵀ,  z_i = z_{i−1} + φ(k_i),  out_i = φ(q_i)ᵀS_i / (φ(q_i)ᵀz_i + ε)
    non-causal:         out_i = φ(q_i)ᵀ(Σ_j φ(k_j) v_jᵀ) / (φ(q_i)ᵀ Σ_j φ(k_j) + ε)

Rows are non-negative and sum to 1 (row-stochastic). Backends: ``reference`` (the dense a above, returned as
the weights), ``recurrent`` (the RNN), ``chunked`` (quadratic within chunks, state between them); the fast
paths compute the global sums when non-causal, so they serve cross-attention too.

Source: the paper's linear attention with φ = elu + 1 (§3.2) and its RNN form (§3.4), checked against the
authors' code, idiap/fast-transformers ``fast_transformers/attention/linear_attention.py`` (``LinearAttention``,
``elu_feature_map``; ``causal_linear_attention.py`` for the causal form). ε = 1e-12 (HazyResearch/based
``based/models/mixers/linear_attention.py``'s default) rather than fast-transformers' ``eps=1e-6``, so rows
sum to 1 to float precision. The section numbers are unverified here (check against arXiv:2006.16236).
"""

from __future__ import annotations

from torch import Tensor

from attnlab.attention.linear.base import SCAN_BACKENDS, ScanKernelAttention, ScanParams
from attnlab.attention.linear.feature_maps import elu1
from attnlab.attention.normalisers.base import NORMALISERS


@NORMALISERS.register(
    "linear_elu",
    summary="linear attention: φ = elu + 1, rows φ(q)·φ(k) / Σ",
    paper="Katharopoulos et al. 2020, arXiv:2006.16236",
    params=ScanParams,
    example={"chunk_size": 8},
    row_stochastic=True,
    backends=SCAN_BACKENDS,
    score_mod=False,
    kernel=True,
)
class LinearElu(ScanKernelAttention):
    name = "linear_elu"

    def __init__(self, params: ScanParams | None = None, site: object | None = None):
        super().__init__(params or ScanParams(), site)

    def features(self, q: Tensor, k: Tensor, scale: float | None) -> tuple[Tensor, Tensor, float | None]:
        return elu1(q if scale is None else q * scale), elu1(k), 1.0
