"""2D-TPE — two-dimensional table positional encoding (Li, Guan, Wu, Yu, Yan, "2D-TPE: Two-Dimensional Positional
Encoding Enhances Table Understanding for Large Language Models", 2024, arXiv:2409.19700).

How a sequence maps to a table: tokens ``start … start + rows·cols·cell_tokens − 1`` are the row-major
flattening of a ``rows × cols`` table whose cells hold ``cell_tokens`` contiguous tokens each; tokens before and
after the table are text. Each token m gets one index per traversal order j:

    p_row(m) = m                                                   (row-major: the sequence order itself)
    p_col(m) = start + (c · rows + r) · cell_tokens + o            for the token o of cell (r, c); m outside: m

so tokens inside a cell stay contiguous and text after the table has the same index in both orders.

The paper's attention (as in the authors' code, JinaLeejnl/2D-TPE ``TPE-Llama/modeling_llama.py``,
``LlamaAttention.forward``, read in the repository), which the entry computes in
its ``attend`` (the layer hands it unrotated q, k, v and the layer input x; ``rotate`` is the identity): for each
order j, RoPE at p_j on q and k and attention with the layer's normaliser gives o_j; a router per head and token
mixes them,

    r_m^h = softmax(W3 (SiLU(W1 x_m^h) ⊙ W2 x_m^h)) ∈ Δ²,     o_m^h = Σ_j r_{m,j}^h o_{m,j}^h

with x_m^h the h-th d-slice of the layer input and W1, W2 ∈ R^{4d×d}, W3 ∈ R^{2×4d} shared by the heads. The
router's form, ``gate_3(act_fn(gate_1(x)) * gate_2(x))`` on the per-head view of the layer input, is the
released code's; its sizes are UNVERIFIED: that ``LlamaAttention`` uses ``gate_1``, ``gate_2``, ``gate_3``,
``act_fn`` and ``expert_nums`` but its ``__init__`` never defines them, so the 4d hidden size is taken from the
paper's method description (arXiv:2409.19700, to be checked there). ``hook_pattern`` shows Σ_j r_j A_j.
In training the module's ``aux_loss`` is the router entropy penalty λ · mean_{b, h, m in table} H(r_m^h)
(λ = ``entropy_weight``; the code's ``config.lamda``, 1 when unset), divided by the number of layers so that
the model's summed loss is λ times the mean over layers, as in the code (``LlamaModel.forward`` takes
``torch.mean`` of the layers' entropies, and ``LlamaForCausalLM`` adds ``lamda * entropy`` to the loss).

Masks (``mask``; non-causal sites attend to every key in both orders, a ``window`` counts in the mask's index):

- ``"sequence"`` (default): the ordinary sequence-causal mask in both orders. Causality in sequence order holds,
  so a language model can train on every position and KV-cache decoding equals the full pass.
- ``"order"``: the paper's mask, causal *in order j* (key n visible to query m iff p_j(n) ≤ p_j(m)). In column
  order a table token sees cells that come later in the sequence (the cell below it), so this BREAKS sequence
  causality: only for training on tokens after the table, as the paper does (loss on the answer only). Tokens
  after the table see every cell in both orders, so their outputs equal the "sequence" mask's; table tokens
  decoded with a KV cache cannot see cells not yet generated, so cached decoding differs inside the table.

Grouped key heads (GQA, MQA): the cache holds one unrotated key set, and every step rotates all keys at both
orders, so every query head reads both orders with its group's key head — the paper's cache of two rotated key
sets (1.5× the memory of k, v) is traded for re-rotating the cached keys (compute, not memory). Positions depend
only on each token's own absolute position, so scores are not shift-invariant (the table is anchored at
``start``). The layer applies the normaliser's ``prepare`` (e.g. LSSA's q, k normalisation) before the rotation.
Kernel-attention normalisers (q, k arrive feature-mapped) are refused at run time; heads with their own ``attend``
or ``rotate`` (differential, talking heads, sinks, RCMHA, MLA, CLLA) are bypassed by the layer's dispatch, so the
pairing is not meaningful (config-time rejection belongs in ``AttentionConfig.check_site``).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from attnlab.position.base import POSITIONS, PositionEncoding
from attnlab.position.rope import apply_rotary, rope_angles, rope_inv_freq
from attnlab.types import AttnOutput, Normaliser, compute_dtype, repeat_kv

ROUTER_EXPANSION = 4  # hidden size 4d (W1, W2 ∈ R^{4d×d}): the paper's description; the released code omits it


class TPE2DParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    rows: int = Field(4, gt=0)
    cols: int = Field(4, gt=0)
    start: int = Field(0, ge=0)  # sequence position of the table's first token
    cell_tokens: int = Field(1, gt=0)  # tokens per cell, kept contiguous in both orders
    mask: Literal["sequence", "order"] = "sequence"  # "order": the paper's mask, not sequence-causal (see above)
    entropy_weight: float = Field(1.0, ge=0)  # λ of the router entropy penalty (training only)
    base: float = Field(10000.0, gt=1)
    interleaved: bool = False


def column_major_positions(positions: Tensor, rows: int, cols: int, start: int = 0, cell_tokens: int = 1) -> Tensor:
    """p_col for sequence positions (= p_row); positions outside the table are returned unchanged."""
    rel = positions - start
    in_table = (rel >= 0) & (rel < rows * cols * cell_tokens)
    cell, offset = rel.div(cell_tokens, rounding_mode="floor"), rel % cell_tokens
    r, c = cell.div(cols, rounding_mode="floor"), cell % cols
    return torch.where(in_table, start + (c * rows + r) * cell_tokens + offset, positions)


def table_router_logits(x_heads: Tensor, w1: Tensor, w2: Tensor, w3: Tensor) -> Tensor:
    """The router's logits W3 (SiLU(W1 x) ⊙ W2 x), r = their softmax: x_heads [B, H, T, d] → [B, H, T, J]."""
    return (F.silu(x_heads @ w1.T) * (x_heads @ w2.T)) @ w3.T


def visibility(q_idx: Tensor, k_idx: Tensor, causal: bool, window: int | None) -> Tensor | None:
    """Boolean [Tq, Tk], True where key n is visible to query m, from their indices in one order (None: all)."""
    if not causal and window is None:
        return None
    ahead = q_idx[:, None] - k_idx[None, :]  # how far the key is behind the query
    visible = ahead >= 0 if causal else torch.ones_like(ahead, dtype=torch.bool)
    if window is not None:
        visible &= (ahead < window) if causal else (ahead.abs() < window)
    return visible


@POSITIONS.register(
    "tpe2d",
    summary="RoPE at row-major and column-major table positions, two attentions mixed per head and token (2D-TPE)",
    paper="Li et al. 2024, arXiv:2409.19700",
    params=TPE2DParams,
    example={"rows": 2, "cols": 3, "start": 1},
    cross=False,
    owns_attention=True,
)
class TablePositions2D(PositionEncoding):
    def __init__(self, params: TPE2DParams | None = None, site: object | None = None):
        super().__init__()
        self.params = params = params or TPE2DParams()
        self.d_head, self.n_heads = int(site.d_head), int(site.n_heads)  # type: ignore[union-attr]
        if self.d_head % 2:
            raise ValueError(f"tpe2d needs an even head dimension; got d_head={self.d_head}")
        hidden = ROUTER_EXPANSION * self.d_head
        self.w1 = nn.Linear(self.d_head, hidden, bias=False)  # router weights, shared by the heads
        self.w2 = nn.Linear(self.d_head, hidden, bias=False)
        self.w3 = nn.Linear(hidden, 2, bias=False)
        self.entropy_weight = params.entropy_weight / int(getattr(site, "n_layers", 1))
        self.aux_loss: Tensor | None = None

    def orders(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        """(p_row, p_col) of sequence positions."""
        p = self.params
        return positions, column_major_positions(positions, p.rows, p.cols, p.start, p.cell_tokens)

    def router_logits(self, x: Tensor) -> Tensor:
        """x [B, T, D] → [B, H, T, 2]: each head's logits over (row, col) from its d-slice of x."""
        b, t, _ = x.shape
        x_heads = x.view(b, t, self.n_heads, self.d_head).transpose(1, 2)
        return table_router_logits(x_heads, *(w.weight.to(x.dtype) for w in (self.w1, self.w2, self.w3)))

    def entropy_loss(self, log_gates: Tensor, q_pos: Tensor) -> Tensor:
        """λ · mean router entropy over batch, heads and the query tokens inside the table (0 if none)."""
        p = self.params
        in_table = (q_pos >= p.start) & (q_pos < p.start + p.rows * p.cols * p.cell_tokens)
        if not bool(in_table.any()):
            return log_gates.new_zeros(())
        entropy = -(log_gates.exp() * log_gates).sum(-1)  # [B, H, T]
        return self.entropy_weight * entropy[..., in_table].mean()

    def attend(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        *,
        x: Tensor,
        start: int,
        normaliser: Normaliser,
        causal: bool,
        scale: float | None,
        window: int | None,
    ) -> AttnOutput:
        """Σ_j r_j · attention(RoPE at p_j, mask) over j ∈ (row, col). q [B, H, T, d]; k, v [B, Hkv, S, d], the keys
        at positions 0 … S − 1 (with a cache) and the queries at start … start + T − 1."""
        if hasattr(normaliser, "attend"):  # kernel attention: q, k arrive feature-mapped, there are no q·k scores
            raise ValueError("tpe2d computes q·k scores itself; it cannot host a kernel-attention normaliser")
        dtype = compute_dtype(q)
        n_rep = q.shape[1] // k.shape[1]
        k, vc = repeat_kv(k.to(dtype), n_rep), repeat_kv(v.to(dtype), n_rep)
        q_pos = torch.arange(start, start + q.shape[2], device=q.device)
        k_pos = torch.arange(k.shape[2], device=q.device)
        scale = q.shape[-1] ** -0.5 if scale is None else scale
        log_gates = self.router_logits(x.to(dtype)).log_softmax(-1)  # [B, H, T, 2]
        gates = log_gates.exp()
        inv_freq = rope_inv_freq(self.d_head, self.params.base)
        sequence_mask = visibility(q_pos, k_pos, causal, window)
        out, weights = torch.zeros_like(q, dtype=dtype), 0.0
        for j, (pq, pk) in enumerate(zip(self.orders(q_pos), self.orders(k_pos), strict=True)):
            qj = apply_rotary(q.to(dtype), rope_angles(pq, inv_freq), self.params.interleaved)
            kj = apply_rotary(k, rope_angles(pk, inv_freq), self.params.interleaved)
            mask = visibility(pq, pk, causal, window) if self.params.mask == "order" else sequence_mask
            a = normaliser((qj * scale) @ kj.transpose(-1, -2), mask)  # [B, H, T, S]
            out = out + gates[..., j : j + 1] * (a @ vc)
            weights = weights + gates[..., j : j + 1] * a
        self.aux_loss = self.entropy_loss(log_gates, q_pos) if self.training else None
        return AttnOutput(out.to(v.dtype), None, weights)
