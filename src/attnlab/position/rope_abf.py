"""ABF — RoPE with an adjusted base frequency — and its Entropy-aware variant (Zhang, Li, Liu, "Extending LLMs'
Context Window with 100 Samples", 2024, arXiv:2401.07004).

ABF: plain RoPE with a larger base, b = 500 000 instead of 10 000 (θ_i = b^{−2i/d}); used by the paper (and,
with other bases, by Code Llama and Llama 3).

Entropy-aware ABF (``entropy_scaling=True``): after RoPE, every layer from ``unscaled_layers`` on scales the
*query* at absolute position m by

    λ_m = max(1, log(m + 1) / log L)          logits[m, n] = λ_m · (R_m q_m) · (R_n k_n) / √d

so attention logits grow like log of the position beyond the training length L, keeping attention entropy near
its training-length value (the scale is λ, not λ², since keys are not scaled).

Source: the authors' code, GAIR-NLP/Entropy-ABF ``patch/EABF.py`` (read in the repository):
``apply_rotary_pos_emb_scale`` computes ``scale = log(position_ids + 1) / log(4096)``, clamped below at 1, and
multiplies it into ``q_embed`` only; the "eabf" rotary embedding uses base 500000; ``apply_eabf(model,
count=2)`` is meant to restore unscaled RoPE in the first two layers. Here L is the site's training length
(``seq_len``) rather than Llama-2's hard-coded 4096, unless ``entropy_length`` is set. Checked in the same
repository: ``apply_eabf`` only sets an instance attribute ``layers[i].self_attn.apply_rotary_pos_emb``, while
the patched attention forward (``patch/flash_attn_monkey_patch.py``) calls the module-level
``modeling_llama.apply_rotary_pos_emb``, which ``EABF.py`` replaces with the scaled version for every layer;
so in that code path the first-two-layers exemption does not take effect. ``count=2`` is still the authors'
stated intent (the paper's own argument for two layers is unverified here, against arXiv:2401.07004), and 2
is the default here (set ``unscaled_layers=0`` to scale every layer, as the released code path does).

Capabilities: λ_m depends only on the query's own absolute position, so KV-cache decoding equals the full pass.
Without entropy scaling, scores depend on m − n only; with it, they also depend on m once m + 1 > L (a shift of
all positions changes them).
"""

from __future__ import annotations

import math

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from attnlab.position._training_length import training_length
from attnlab.position.base import POSITIONS
from attnlab.position.rope import RoPE


class ABFParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    base: float = Field(500000.0, gt=1)
    interleaved: bool = False
    entropy_scaling: bool = False
    entropy_length: int | None = Field(None, gt=1)  # L of log_L(m + 1); None: the site's seq_len
    unscaled_layers: int = Field(2, ge=0)  # the first layers keep plain ABF attention

    def check_site(self, site: object, field: str) -> None:
        if self.entropy_scaling:
            training_length(self.entropy_length, site, f"{field}.entropy_length")


def entropy_scale(positions: Tensor, length: int) -> Tensor:
    """λ_m = max(1, log(m + 1) / log L) for absolute positions m, float64 [T]."""
    return (torch.log(positions.to(torch.float64) + 1) / math.log(length)).clamp(min=1.0)


@POSITIONS.register(
    "rope_abf",
    summary="RoPE with a large base (ABF), optionally with Entropy-ABF's log-length query scaling",
    paper="Zhang, Li, Liu 2024, arXiv:2401.07004",
    params=ABFParams,
    cross=False,
)
class AdjustedBaseFrequency(RoPE):
    def __init__(self, params: ABFParams | None = None, site: object | None = None):
        params = params or ABFParams()
        super().__init__(params, site)  # type: ignore[arg-type]  (reads base, interleaved)
        layer = int(getattr(site, "layer_idx", 0))
        self.entropy_length: int | None = None
        if params.entropy_scaling and layer >= params.unscaled_layers:
            self.entropy_length = training_length(params.entropy_length, site, "position_args.entropy_length")

    def rotate(self, q: Tensor, k: Tensor, positions: Tensor) -> tuple[Tensor, Tensor]:
        rq, rk = super().rotate(q, k, positions)
        if self.entropy_length is None:
            return rq, rk
        scale = entropy_scale(positions, self.entropy_length).to(rq.device)[..., None]  # [T, 1] or [B, T, 1]
        if scale.dim() == 3:  # per-row positions [B, T]: broadcast over the heads
            scale = scale[:, None]
        return (rq.to(scale.dtype) * scale).to(rq.dtype), rk
