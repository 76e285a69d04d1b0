"""RCMHA: Relative Convolutional Multi-Head Attention (Sugiharto, Aradea, Mubarok, "RCMHA: Relative
Convolutional Multi-Head Attention for Natural Language Modelling", 2023, arXiv:2308.03429).

Two changes to MHA. (1) A causal depth-wise convolution over time (kernel K = 3, one kernel per channel of
a head, shared by all heads — Primer's "multi-DConv-head" idea) after each of the q, k, v projections:

    conv(x)_t = b + Σ_{m=0}^{K−1} w_m ⊙ x_{t−K+1+m}        (zeros before the first token)

(2) Transformer-XL relative scores with a learned table per relative distance, P = ``max_distance``:

    s_ij = [ (q_i + u) · k_j  +  q_i · R_{i−j}  +  b_{i−j} ] / √d_head

u ∈ R^{H×d}, R ∈ R^{2P×H×d}, b ∈ R^{2P×H}, all initialised to zero; distance i − j is stored at row
P − (i − j), i.e. key offsets j − i ∈ [−P, P−1]; farther keys share the last row (clipped).

Source followed: hermansh-id/rcmha ``rcmha/attention.py`` (labml-based): q, k projections without bias, v with
bias; ``nn.Conv1d(d, d, 3, groups=d, padding=2)`` with the last two outputs trimmed; ``key_pos_embeddings``
(2P, H, d), ``key_pos_bias`` (2P, H), ``query_pos_bias`` (H, d), zeros; output Linear with bias; P = 4096.
The row ↔ distance mapping P + (j − i) was read off the source's ``shift_right`` trick by evaluating it;
here the table is gathered densely instead. Checked in the repository: the released ``main.py`` builds its
model with ``labml_nn.transformers.xl.RelativeMultiHeadAttention`` (labml's plain relative attention), not
this class (``rcmha/model.py`` imports the repository's class only for a type annotation), so the paper's
numbers may not come from this code; Transformer-XL's memory segment is not implemented. Use
``position="nope"``: another position encoding (RoPE) would be applied on top of the relative scores.

Capabilities: no KV cache (decoding is rejected at config time). The convolution of a new token needs the
last K − 1 projected inputs of q, k and v; attnlab's LayerKVCache stores only (rotated) k and v, and
``project`` does not see the cache, so cached decoding would be silently wrong. Cross-attention is not
supported (a causal convolution over the context has no meaning there). Kernel (linear) normalisers, which
bring their own ``attend``, are refused at the first forward pass.
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
)
from attnlab.attention.heads.base import HEADS, Projection, merge_heads, split_heads


class RCMHAParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    max_distance: int = Field(4096, gt=0)  # P: relative offsets −P … P−1 have their own R and b
    kernel_size: int = Field(3, gt=0)  # of the causal depth-wise convolution


class CausalDepthwiseConv(nn.Module):
    """Depth-wise convolution over time on [B, H, T, d], each output seeing only its own and earlier tokens."""

    def __init__(self, channels: int, kernel_size: int):
        super().__init__()
        bound = kernel_size**-0.5  # nn.Conv1d's default range for a depth-wise kernel (fan-in = K)
        self.weight = nn.Parameter(torch.empty(channels, kernel_size).uniform_(-bound, bound))  # w [d, K]
        self.bias = nn.Parameter(torch.empty(channels).uniform_(-bound, bound))

    def forward(self, x: Tensor) -> Tensor:
        k, t = self.weight.shape[1], x.shape[2]
        padded = nn.functional.pad(x, (0, 0, k - 1, 0))  # K − 1 zeros before the first token: [B, H, T+K−1, d]
        return self.bias + sum(self.weight[:, m] * padded[:, :, m : m + t] for m in range(k))


def relative_rows(t_q: int, t_k: int, max_distance: int, device: torch.device | None = None) -> Tensor:
    """[Tq, Tk] row of the relative table for each (query, key): P + (j − i), clipped to [0, 2P − 1].

    Queries are the last Tq of Tk positions (as in ``attend_reference``), so query i sits at i + Tk − Tq.
    """
    q_pos = torch.arange(t_q, device=device)[:, None] + (t_k - t_q)
    k_pos = torch.arange(t_k, device=device)[None, :]
    return (k_pos - q_pos).clamp(-max_distance, max_distance - 1) + max_distance


class RelativeConvHeads(nn.Module):
    def __init__(self, d_model: int, n_heads: int, max_distance: int, kernel_size: int):
        super().__init__()
        d = d_model // n_heads
        self.n_heads, self.max_distance = n_heads, max_distance
        self.q_proj = nn.Linear(d_model, n_heads * d, bias=False)
        self.k_proj = nn.Linear(d_model, n_heads * d, bias=False)
        self.v_proj = nn.Linear(d_model, n_heads * d, bias=True)
        self.o_proj = nn.Linear(n_heads * d, d_model, bias=True)
        self.q_conv, self.k_conv, self.v_conv = (CausalDepthwiseConv(d, kernel_size) for _ in range(3))
        self.query_bias = nn.Parameter(torch.zeros(n_heads, d))  # u
        self.rel_key = nn.Parameter(torch.zeros(2 * max_distance, n_heads, d))  # R
        self.rel_bias = nn.Parameter(torch.zeros(2 * max_distance, n_heads))  # b

    def project(self, x: Tensor, context: Tensor | None = None) -> Projection:
        q = self.q_conv(split_heads(self.q_proj(x), self.n_heads))  # [B, H, T, d]
        k = self.k_conv(split_heads(self.k_proj(x), self.n_heads))
        v = self.v_conv(split_heads(self.v_proj(x), self.n_heads))
        return Projection(q, k, v)

    def relative_scores(self, q: Tensor, t_k: int) -> Tensor:
        """q · R_{i−j} + b_{i−j}, [B, H, Tq, Tk], by gathering one table row per (i, j)."""
        rows = relative_rows(q.shape[2], t_k, self.max_distance, q.device)
        rel_key = self.rel_key[rows].to(q.dtype)  # [Tq, Tk, H, d]
        rel_bias = self.rel_bias[rows].to(q.dtype).permute(2, 0, 1)  # [Tq, Tk, H] → [H, Tq, Tk]
        return torch.einsum("bhid,ijhd->bhij", q, rel_key) + rel_bias

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
        """Dense Transformer-XL attention: ``attend_reference`` with the content and position terms above."""
        if hasattr(normaliser, "attend"):  # kernel attention: no score matrix for this head to extend
            raise ValueError(
                f"heads='rcmha' computes score-based attention itself; normaliser {type(normaliser).__name__} "
                "has its own attention computation (kernel attention): use a score normaliser such as softmax"
            )
        scale = q.shape[-1] ** -0.5 if scale is None else scale
        dtype = compute_dtype(q)
        qc, kc = q.to(dtype), k.to(dtype)
        content = (qc + self.query_bias.to(dtype)[None, :, None, :]) @ kc.transpose(-1, -2)  # [B, H, Tq, Tk]
        scores = (content + self.relative_scores(qc, k.shape[2])) * scale
        if score_mod is not None:
            scores = apply_score_mod(scores, score_mod)
        mask = build_mask(q.shape[2], k.shape[2], q.device, causal, window) if mask is None else mask
        weights = normalise(normaliser, scores, mask)  # a caller's row that sees nothing: weights 0
        out = (weights @ v.to(dtype)).to(v.dtype)  # [B, H, Tq, d]
        shown = scores if mask is None else scores.masked_fill(~mask, float("-inf"))
        return AttnOutput(out, shown, weights)

    def combine(self, z: Tensor, x: Tensor) -> Tensor:
        return self.o_proj(merge_heads(z))


@HEADS.register(
    "rcmha",
    summary="relative convolutional MHA: causal depth-wise conv on q, k, v + Transformer-XL relative scores",
    paper="Sugiharto et al. 2023, arXiv:2308.03429",
    params=RCMHAParams,
    example={"max_distance": 16},
    cross=False,
    kv_cache=False,
    kernel_ok=False,
)
def build_rcmha(params: RCMHAParams, site) -> RelativeConvHeads:
    return RelativeConvHeads(site.d_model, site.n_heads, params.max_distance, params.kernel_size)
