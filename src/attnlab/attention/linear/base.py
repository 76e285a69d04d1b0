"""What every kernel-attention normaliser shares: the quadratic reference and the scanned fast paths.

Kernel attention is dot-product attention on feature-mapped queries and keys with a *linear* normaliser:

    prepare:  q, k → φ(q), φ(k)                       (the feature map; scale 1 unless the mechanism says)
    scores:   κ_ij = φ(q_i)·φ(k_j)                    (what ``hook_attn_scores`` shows)
    weights:  a_ij = rows(κ_ij · D_ij · M_ij)          D: per-head decay λ_h^{|i−j|}, or 1; M: the mask
    out:      norm(a V)                               norm: Lightning's / RetNet's output norm, else identity

with ``rows`` one of ``l1`` (a / (Σ_j a + ε): normalised linear attention), ``none`` (Lightning) or
``retention`` (RetNet's D row-normalisation and |Σ_j R_ij| clamp). So the generic ``attend_reference`` of
``attnlab.attention.core`` is the reference (``attend`` adds the output norm and returns the weights for the
hooks), and every claim the registry makes about weights is checked on the same code as softmax's.

The fast paths (``attend_recurrent``, ``attend_chunked``) never build the T×T matrix: they run the scans of
``attnlab.attention.linear.scan`` on [v, 1], so the numerator and the denominator come from one pass.
Kernel attention has no score matrix a ``score_mod`` could edit, so ALiBi / T5 bias are rejected
(capability ``score_mod=False``); use RoPE, NoPE or an absolute position instead.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from attnlab.attention.core import AttnOutput, ScoreMod, attend_reference, compute_dtype, repeat_kv
from attnlab.attention.linear.scan import (
    Scan,
    bidirectional_sums,
    chunked_sums,
    decay_matrix,
    decay_row_sums,
    global_sums,
    recurrent_sums,
)
from attnlab.attention.normalisers.base import NormaliserBase, masked_fill_zero

RowRule = Literal["l1", "none", "retention"]
SCAN_BACKENDS = ("reference", "recurrent", "chunked")


class KernelParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    eps: float = Field(1e-12, gt=0)  # l1 rows: a / (Σ a + eps)


class ScanParams(KernelParams):
    chunk_size: int = Field(64, gt=0)  # positions per chunk of the chunked backend


def finish_rows(num: Tensor, den: Tensor, rule: RowRule, eps: float, decay_sums: Tensor | None = None) -> Tensor:
    """Turn Σ_j a_ij x_j (``num``) and Σ_j a_ij (``den``, [..., Tq, 1]) into the mechanism's row output.

    Works on weights (num = the raw matrix) and on outputs (num = raw @ v) alike.
    """
    if rule == "l1":
        return num / (den + eps)
    if rule == "retention":  # D̃ = D / √(Σ_j D_ij), then R̃ = R / max(|Σ_j R_ij|, 1)
        r = decay_sums.rsqrt()  # type: ignore[union-attr]
        return num * r / (den * r).abs().clamp(min=1.0)
    return num


def rms_normalise(x: Tensor, per_head: bool, eps: float) -> Tensor:
    """x / rms(x) without a weight (SimpleRMSNorm): over d_head, or over all heads of a token. x [B,H,T,d]."""
    dims = (-1,) if per_head else (1, -1)
    return x * torch.rsqrt(x.pow(2).mean(dim=dims, keepdim=True) + eps)


class KernelAttention(NormaliserBase):
    """Base of the kernel-attention normalisers: ``prepare`` maps q, k; ``forward`` weighs κ; ``attend``."""

    name: ClassVar[str] = "kernel"
    rows: ClassVar[RowRule] = "l1"
    params: KernelParams
    slopes: Tensor | None  # per-head decay slopes s_h (λ_h = exp(−s_h)), or None for no decay

    def __init__(self, params: KernelParams, site: object | None = None):
        super().__init__()
        self.params = params
        self.n_heads = int(getattr(site, "n_heads", 1))
        self.d_head = int(getattr(site, "d_head", 0) or 0)
        self.register_buffer("slopes", None, persistent=False)  # decayed mechanisms register theirs

    # --- the three stages -------------------------------------------------------------------------

    def prepare(self, q: Tensor, k: Tensor, scale: float | None) -> tuple[Tensor, Tensor, float | None]:
        dtype = compute_dtype(q)
        return self.features(q.to(dtype), k.to(dtype), scale)

    def features(self, q: Tensor, k: Tensor, scale: float | None) -> tuple[Tensor, Tensor, float | None]:
        """φ(q), φ(k) and the scale of their dot product. ``scale``, when given, multiplies q before φ."""
        raise NotImplementedError

    def forward(self, scores: Tensor, mask: Tensor | None) -> Tensor:
        raw = scores.to(compute_dtype(scores))
        t_q, t_k = raw.shape[-2:]
        decay = None
        if self.slopes is not None:  # λ^{|i−j|}; the mask removes the future when causal
            decay = decay_matrix(t_q, t_k, self.slopes.to(raw.dtype), causal=False)
            raw = raw * decay
        raw = masked_fill_zero(raw * self.positional(t_q, t_k, raw), mask)
        decay_sums = None
        if self.rows == "retention" and decay is not None:
            decay_sums = masked_fill_zero(decay.expand_as(raw), mask).sum(-1, keepdim=True)
        return finish_rows(raw, raw.sum(-1, keepdim=True), self.rows, self.params.eps, decay_sums)

    def positional(self, t_q: int, t_k: int, like: Tensor) -> Tensor | float:
        """A relative-position factor on κ (the RPE of ``kernel_rpe_fft``); 1 by default."""
        return 1.0

    def output_norm(self, out: Tensor) -> Tensor:
        """Applied to a V (Lightning's SimpleRMSNorm, RetNet's group norm); identity by default."""
        return out

    # --- the reference ----------------------------------------------------------------------------

    def attend(
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
        """The quadratic reference on prepared q, k: dense T×T weights, then the output norm."""
        self.reject_score_mod(score_mod)
        res = attend_reference(q, k, v, normaliser=self, causal=causal, scale=scale, window=window)
        out = self.output_norm(res.out.to(compute_dtype(q))).to(v.dtype)
        return AttnOutput(out, res.scores, res.weights)

    def reject_score_mod(self, score_mod: ScoreMod | None) -> None:
        if score_mod is not None:
            raise ValueError(
                f"normaliser {self.name!r}: kernel attention has no score matrix for a score_mod (ALiBi, T5 bias) "
                "to edit; use position='rope', 'nope', 'learned' or 'sinusoidal'"
            )


class ScanKernelAttention(KernelAttention):
    """Adds the ``recurrent`` and ``chunked`` backends: the decayed scans of ``linear.scan``."""

    params: ScanParams

    def kernel(self, q: Tensor, k: Tensor, scale: float) -> tuple[Tensor, Tensor]:
        """The features the scans multiply, from prepared q, k (Based expands Taylor features here)."""
        return q * scale, k

    def extra(self, out: Tensor, q: Tensor, k: Tensor, v: Tensor, causal: bool, scale: float, recurrent: bool):
        """A term added to the scanned rows (Based's sliding-window softmax); none by default."""
        return out

    def attend_recurrent(
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
        """Token by token with an F × (d_v + 1) state per head: O(T) memory."""
        return self.scanned(q, k, v, score_mod, causal, scale, window, recurrent_sums, "recurrent")

    def attend_chunked(
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
        """Quadratic inside chunks of ``chunk_size`` positions, a carried state between them."""

        def scan(q: Tensor, k: Tensor, v: Tensor, slopes: Tensor) -> Tensor:
            return chunked_sums(q, k, v, slopes, self.params.chunk_size)

        return self.scanned(q, k, v, score_mod, causal, scale, window, scan, "chunked")

    def scanned(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        score_mod: ScoreMod | None,
        causal: bool,
        scale: float | None,
        window: int | None,
        scan: Scan,
        backend: str,
    ) -> AttnOutput:
        self.reject_score_mod(score_mod)
        if window is not None:
            raise ValueError(
                f"normaliser {self.name!r}: backend {backend!r} does not support AttentionConfig.window={window}; "
                "use backend='reference'"
            )
        if causal and q.shape[2] > k.shape[2]:
            raise ValueError(f"causal attention needs Tq <= Tk; got Tq={q.shape[2]}, Tk={k.shape[2]}")
        dtype = compute_dtype(q)
        n_rep = q.shape[1] // k.shape[1]
        q, k, v0 = q.to(dtype), repeat_kv(k, n_rep).to(dtype), repeat_kv(v, n_rep).to(dtype)
        t_q, t_k = q.shape[2], k.shape[2]
        scale = q.shape[-1] ** -0.5 if scale is None else scale
        fq, fk = self.kernel(q, k, scale)
        v1 = torch.cat([v0, v0.new_ones(*v0.shape[:-1], 1)], dim=-1)  # [B, H, Tk, E + 1]: the last column counts
        slopes = self.slopes.to(dtype) if self.slopes is not None else q.new_zeros(q.shape[1])
        if causal:
            sums = scan(fq, fk, v1, slopes)
        elif self.slopes is None:
            sums = global_sums(fq, fk, v1)
        else:
            sums = bidirectional_sums(fq, fk, v1, slopes, scan)
        decay_sums = decay_row_sums(t_q, t_k, slopes, causal) if self.rows == "retention" else None
        out = finish_rows(sums[..., :-1], sums[..., -1:], self.rows, self.params.eps, decay_sums)
        out = self.extra(out, q, k, v0, causal, scale, backend == "recurrent")
        return AttnOutput(self.output_norm(out).to(v.dtype), None, None)
