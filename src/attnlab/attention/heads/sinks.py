"""Learned attention sinks: extra keys every query can attend to, so a head has somewhere to put attention
it does not need.

Softmax makes every row sum to 1, so a head with nothing to read must still spend its mass somewhere;
trained models dump it on the first tokens (StreamingLLM: Xiao et al., "Efficient Streaming Language
Models with Attention Sinks", ICLR 2024, arXiv:2309.17453; Gu et al. 2024, arXiv:2410.10781). Giving the
model dedicated places for it is the remedy of StreamingLLM's learnable sink token, of register tokens
(Darcet et al., "Vision Transformers Need Registers", ICLR 2024, arXiv:2309.16588) and of gpt-oss's
per-head sink logits. Here, per layer and per key/value head, ``n_sinks`` learned vectors are prepended to
the keys inside ``attend`` — after rotation and after the KV cache, so they carry no position and are never
cached:

    kind="kv":     s_i = [ q_i · σ_k · scale ]_{k ≤ n}  ⧺  [ q_i · k_j · scale ]_j,    values [σ_v ; v]
    kind="logit":  s_i = [ ℓ_k ]_{k ≤ n}  ⧺  [ q_i · k_j · scale ]_j,                   values [0 ; v]
    w_i = normaliser(s_i, mask ⧺ visible),   out_i = Σ_k w_ik σ_v,k + Σ_j w_ij v_j

``kind="logit"`` is the gpt-oss form (a learned logit per query head, a sink whose value is zero: it only
absorbs mass), following Hugging Face's ``modeling_gpt_oss.eager_attention_forward`` (logits concatenated
before the softmax, the sink column dropped after it). ``kind="kv"`` is a per-layer learned key/value pair,
the closest per-layer analogue of StreamingLLM's learnable sink token (which instead is a token at the input
and passes through every layer — not implemented). The sink key is scored against the query, so a query
can decide how much to sink; position biases (``score_mod``, e.g. ALiBi) apply to the real keys only.
Sinks are visible to every query, also under a causal or sliding-window mask; the mask over real keys is
unchanged.

For the lens, the returned weights are over the real keys only ([B, H, Tq, Tk], so ``hook_pattern`` keeps its shape
and sink-token metrics keep their meaning); the mass on the sinks [B, H, Tq] (detached) is returned in the output
(``AttnOutput.sink_mass``) and passes the hook point ``blocks.{L}.attn.hook_sink_mass``. With softmax it equals 1 −
the pattern's row sum. Unverified: initialisation (here σ_k ~ N(0, 1/d), σ_v = 0, ℓ = 0; gpt-oss initialises its
sink logits like the other weights), and whether sinks interact as intended with normalisers that rescale keys in
``prepare`` (the sink keys are not passed through it). Kernel (linear) normalisers, which bring their own
``attend``, are refused at the first forward pass: this file needs a score matrix to extend.

``attend_sdpa`` is the same attention through PyTorch's SDPA (``attnlab.attention.fast.sdpa_sinks.sinks_sdpa``),
with the sink mass exactly but no scores or weights, for softmax without soft-capping and no bias or ALiBi's typed
bias; the layer's dispatch table (``attnlab.attention.dispatch``) sends a call to it only then.
"""

from __future__ import annotations

from typing import Literal

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
    repeat_kv,
)
from attnlab.attention.heads.base import HEADS, MultiHead, check_kv_heads
from attnlab.hook_points import HookPoint
from attnlab.types import AlibiBias, PositionBias


class SinkParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    n_sinks: int = Field(1, gt=0)
    kind: Literal["kv", "logit"] = "kv"  # learned key/value vectors, or gpt-oss's learned logits with zero value
    n_kv_heads: int | None = Field(None, gt=0)

    def check_site(self, site, field: str) -> None:
        check_kv_heads(self.n_kv_heads, site, field)


class SinkMultiHead(MultiHead):
    def __init__(self, d_model: int, n_heads: int, n_kv_heads: int, n_sinks: int, kind: str):
        super().__init__(d_model, n_heads, n_kv_heads)
        self.n_sinks, self.kind = n_sinks, kind
        d = self.d_head
        if kind == "kv":
            self.sink_k = nn.Parameter(torch.randn(n_kv_heads, n_sinks, d) * d**-0.5)  # σ_k
            self.sink_v = nn.Parameter(torch.zeros(n_kv_heads, n_sinks, d))  # σ_v
        else:
            self.sink_logit = nn.Parameter(torch.zeros(n_heads, n_sinks))  # ℓ, one per query head
        self.hook_sink_mass = HookPoint()  # [B, H, Tq]; the layer hoists it to blocks.{L}.attn.hook_sink_mass

    def sink_scores_and_values(self, q: Tensor, scale: float) -> tuple[Tensor, Tensor]:
        """Scores [B, H, Tq, n] of the sinks and their values [1 or B, H, n, d], in q's dtype."""
        b, h, t_q, d = q.shape
        if self.kind == "logit":
            scores = self.sink_logit.to(q.dtype)[None, :, None, :].expand(b, h, t_q, self.n_sinks)
            return scores, q.new_zeros(1, h, self.n_sinks, d)
        rep = h // self.n_kv_heads
        keys = repeat_kv(self.sink_k.to(q.dtype)[None], rep)  # [1, H, n, d]
        return (q * scale) @ keys.transpose(-1, -2), repeat_kv(self.sink_v.to(q.dtype)[None], rep)

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
        """``attend_reference`` over [sinks ⧺ keys]; returns weights over the real keys only."""
        n, (t_q, t_k) = self.n_sinks, (q.shape[2], k.shape[2])
        rep = q.shape[1] // k.shape[1]
        if hasattr(normaliser, "attend"):  # kernel attention: no score matrix for this head to extend
            raise ValueError(
                f"heads='sinks' computes score-based attention itself; normaliser {type(normaliser).__name__} "
                "has its own attention computation (kernel attention): use a score normaliser such as softmax"
            )
        scale = q.shape[-1] ** -0.5 if scale is None else scale
        dtype = compute_dtype(q)
        qc = q.to(dtype)
        scores = (qc * scale) @ repeat_kv(k, rep).to(dtype).transpose(-1, -2)  # [B, H, Tq, Tk]
        if score_mod is not None:
            scores = apply_score_mod(scores, score_mod)  # real keys keep their positions 0 … Tk−1
        sink_scores, sink_values = self.sink_scores_and_values(qc, scale)  # [B, H, Tq, n], [·, H, n, d]
        mask = build_mask(t_q, t_k, q.device, causal, window) if mask is None else mask  # a caller's, rule folded in
        full_mask = None if mask is None else torch.cat([mask.new_ones(*mask.shape[:-1], n), mask], dim=-1)
        weights = normaliser(torch.cat([sink_scores, scores], dim=-1), full_mask)  # [B, H, Tq, n + Tk]
        sink_weights, weights = weights[..., :n], weights[..., n:]
        out = weights @ repeat_kv(v, rep).to(dtype) + sink_weights @ sink_values  # [B, H, Tq, d]
        mass = self.hook_sink_mass(sink_weights.sum(-1).detach())  # [B, H, Tq]
        shown = scores if mask is None else scores.masked_fill(~mask, float("-inf"))
        return AttnOutput(out.to(v.dtype), shown, weights, mass)

    def attend_sdpa(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        *,
        normaliser: Normaliser | None = None,
        bias: PositionBias | None = None,
        causal: bool = True,
        scale: float | None = None,
        window: int | None = None,
    ) -> AttnOutput:
        """``attend`` through PyTorch's SDPA (``attnlab.attention.fast.sdpa_sinks.sinks_sdpa``) for softmax without
        soft-capping, with no bias or ALiBi's (``bias``); no scores or weights. Other biases are an error."""
        from attnlab.attention.fast.sdpa_sinks import sinks_sdpa

        if bias is not None and not isinstance(bias, AlibiBias):
            raise ValueError(f"heads='sinks' has an SDPA form with ALiBi or no bias; got {type(bias).__name__}")
        if self.kind == "logit":
            sinks = dict(sink_logits=self.sink_logit)
        else:
            sinks = dict(sink_keys=self.sink_k, sink_values=self.sink_v)
        out, mass = sinks_sdpa(q, k, v, **sinks, alibi=bias, causal=causal, scale=scale, window=window)  # type: ignore[arg-type]
        return AttnOutput(out, None, None, self.hook_sink_mass(mass.detach()))


@HEADS.register(
    "sinks",
    summary="learned attention sinks: n_sinks extra keys (or gpt-oss logits) every query can attend to",
    paper="Xiao et al. 2024, arXiv:2309.17453; Darcet et al. 2024, arXiv:2309.16588",
    params=SinkParams,
    example={"n_sinks": 2},
    kernel_ok=False,
)
def build_sinks(params: SinkParams, site) -> SinkMultiHead:
    n_kv = params.n_kv_heads or site.n_heads
    return SinkMultiHead(site.d_model, site.n_heads, n_kv, params.n_sinks, params.kind)
