"""MoH: Mixture-of-Head attention (Jin, Zhu, Yuan, Yan, "MoH: Multi-Head Attention as Mixture-of-Head
Attention", 2024, arXiv:2410.11842).

Every head is computed; a per-token router then weights the head outputs before the output projection,
so the usual sum of heads becomes a weighted sum. Heads 0 … h_s−1 are *shared* (always on), the other
E = H − h_s heads are *routed* (the top k_r per token are on):

    routed:   p = softmax(x W_r) over the E routed heads;  keep the top k_r;  g_r = k_r · p ⊙ m / Σ(p ⊙ m)
    shared:   g_s = h_s · softmax(x W_s)                      (h_s = 1: g_s = 1, no router)
    balance:  [α1, α2] = 2 · softmax(x W_h);  g_s ← α1 g_s,  g_r ← α2 g_r     (only when both kinds exist)
    out     = W_o · concat_h( g_h · head_h )
    L_b     = E · Σ_e (mean_tokens p_e) · (mean_tokens m_e)       (load balance, training only)
    aux_loss = aux_coef · L_b / n_layers                          (summed over layers: aux_coef · mean L_b)

x is the block input at the query position (``combine``'s ``x``); the routers have no bias. The ×k_r and ×h_s
rescalings keep the output scale of MHA: with a router that is constant over heads, every active head gets
gate exactly 1 (so h_s = H and a zero router is MHA).

Source followed: SkyworkAI/MoH ``MoH-DiT/models.py::MoHAttention`` (routing, renormalisation, the two-stage
α weighting, the balance loss ``mean(me * ce) · E²``) and ``MoH-DiT/train.py`` (the loss added to the
training loss is ``moh_loss_coeff`` = 0.01 times its *mean* over layers; TransformerLM sums the layers' losses,
hence the 1 / n_layers).
Not implemented: the LLaMA3 continue-tuning variant (router logits = ‖q_h‖ / std, no router weights) is not
implemented; the reference computes every head, and so does this file — there is no FLOP saving. The
reference crashes for h_s = 1 with routed heads (``wg_1`` is never built); here h_s = 1 gets gate 1, as the
softmax over one head would give.

The gates [B, T, H] pass through ``hook_head_gate`` (a lens can read or replace them) and are kept, detached,
as ``last_gates``. The balance loss of the last training forward is ``aux_loss`` (None in eval mode), which
``TransformerLM.aux_loss()`` collects. Top-k is piecewise constant: only the selected gates get gradients.
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from attnlab.attention.heads.base import HEADS, MultiHead
from attnlab.errors import ConfigError
from attnlab.hook_points import HookPoint


class MoHParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    n_shared: int = Field(1, ge=0)  # h_s: heads that are always on
    top_k: int = Field(1, ge=0)  # k_r: routed heads switched on per token
    aux_coef: float = Field(0.01, ge=0)  # weight of the load-balance loss

    def check_site(self, site, field: str) -> None:
        h = site.n_heads
        if self.n_shared > h:
            raise ConfigError(f"{field}.n_shared", self.n_shared, f"must be at most n_heads={h}", range(h + 1))
        n_routed = h - self.n_shared
        if n_routed == 0 and self.top_k != 0:
            raise ConfigError(f"{field}.top_k", self.top_k, "must be 0 when every head is shared", [0])
        if n_routed > 0 and not 1 <= self.top_k <= n_routed:
            raise ConfigError(
                f"{field}.top_k", self.top_k, f"must choose among the {n_routed} routed heads", range(1, n_routed + 1)
            )


class MixtureOfHeads(MultiHead):
    """Multi-head attention whose head outputs are weighted per token by shared and top-k routed gates."""

    def __init__(self, d_model: int, n_heads: int, n_shared: int, top_k: int, aux_weight: float):
        super().__init__(d_model, n_heads, n_heads)
        self.n_shared, self.n_routed, self.top_k = n_shared, n_heads - n_shared, top_k
        self.aux_weight = aux_weight  # aux_coef / n_layers
        self.shared_router = nn.Linear(d_model, n_shared, bias=False) if n_shared > 1 else None  # W_s
        self.routed_router = nn.Linear(d_model, self.n_routed, bias=False) if self.n_routed else None  # W_r
        both = n_shared > 0 and self.n_routed > 0
        self.balance_router = nn.Linear(d_model, 2, bias=False) if both else None  # W_h
        self.hook_head_gate = HookPoint()
        self.aux_loss: Tensor | None = None
        self.last_gates: Tensor | None = None

    def routed_gates(self, x: Tensor) -> Tensor:
        """x [B, T, D] → g_r [B, T, E]: k_r · renormalised top-k router probabilities, zero elsewhere."""
        probs = self.routed_router(x).softmax(-1)  # [B, T, E]
        chosen = torch.zeros_like(probs).scatter(-1, probs.topk(self.top_k, dim=-1).indices, 1.0)  # m, 0/1
        kept = probs * chosen
        gates = self.top_k * kept / kept.sum(-1, keepdim=True).clamp_min(torch.finfo(kept.dtype).eps)
        if self.training:
            # E · Σ_e mean(p_e) · mean(m_e) over all tokens: 1 · k_r when routing is perfectly balanced.
            usage = probs.flatten(0, -2).mean(0) * chosen.flatten(0, -2).mean(0)
            self.aux_loss = self.aux_weight * self.n_routed * usage.sum()
        return gates

    def head_gates(self, x: Tensor) -> Tensor:
        """x [B, T, D] → gates [B, T, H], shared heads first (as the reference concatenates them)."""
        self.aux_loss = None
        parts = []
        if self.n_shared:
            if self.shared_router is None:  # one shared head: softmax over one logit is 1
                parts.append(x.new_ones(*x.shape[:-1], 1))
            else:
                parts.append(self.n_shared * self.shared_router(x).softmax(-1))
        if self.n_routed:
            parts.append(self.routed_gates(x))
        if self.balance_router is not None:
            alpha = 2 * self.balance_router(x).softmax(-1)  # [B, T, 2]
            parts = [alpha[..., :1] * parts[0], alpha[..., 1:] * parts[1]]
        return torch.cat(parts, dim=-1)

    def combine(self, z: Tensor, x: Tensor) -> Tensor:
        gates = self.hook_head_gate(self.head_gates(x))  # [B, T, H]
        self.last_gates = gates.detach()
        return super().combine(z * gates.transpose(1, 2).unsqueeze(-1).to(z.dtype), x)  # [B, H, T, 1] · z


@HEADS.register(
    "moh",
    summary="mixture-of-head attention: shared + top-k routed heads, weighted per token",
    paper="Jin et al. 2024, arXiv:2410.11842",
    params=MoHParams,
    example={"n_shared": 1, "top_k": 1},
)
def build_moh(params: MoHParams, site) -> MixtureOfHeads:
    aux_weight = params.aux_coef / site.n_layers
    return MixtureOfHeads(site.d_model, site.n_heads, params.n_shared, params.top_k, aux_weight)
