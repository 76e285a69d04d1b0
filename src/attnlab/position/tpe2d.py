"""2D-TPE — two-dimensional table positional encoding (Li, Guan, Wu, Yu, Yan, "2D-TPE: Two-Dimensional Positional
Encoding Enhances Table Understanding for Large Language Models", 2024, arXiv:2409.19700).

How a sequence maps to a table: tokens ``start … start + rows·cols·cell_tokens − 1`` are the row-major
flattening of a ``rows × cols`` table whose cells hold ``cell_tokens`` contiguous tokens each; tokens before and
after the table are text. Each token m gets one index per traversal order j:

    p_row(m) = m                                                   (row-major: the sequence order itself)
    p_col(m) = start + (c · rows + r) · cell_tokens + o            for the token o of cell (r, c); m outside: m

so tokens inside a cell stay contiguous and text after the table has the same index in both orders.

The paper's attention (card 3, from the authors' ``TPE-Llama/modeling_llama.py``): for each order j, RoPE at
p_j and a causal mask *in order j* (p_j(n) ≤ p_j(m)), giving o_j; a router per head and token mixes them,

    r_m^h = softmax(W3 (SiLU(W1 x_m^h) ⊙ W2 x_m^h)) ∈ Δ²,     o_m^h = Σ_j r_{m,j}^h o_{m,j}^h

with x_m^h the h-th d-slice of the layer input and W1, W2 ∈ R^{4d×d}, W3 ∈ R^{2×4d} shared by the heads (these
sizes are from the method description, UNVERIFIED in the released code), trained with an entropy penalty on r.
``table_order_attention`` and ``table_router`` below are that computation, as a reference.

What the registry entry ``tpe2d`` does — the clearest version attnlab's position interface allows, not the
paper's full method: a position encoding sees only q, k and positions, so it cannot read the layer input for the
router nor mix two attention outputs. The entry therefore fixes the router to one order per head
(``head_orders``; default: the first half of the heads read the table by rows, the rest by columns), i.e. the
paper's attention at a one-hot router, and keeps the ordinary sequence-causal mask in every head: a column-order
causal mask lets a table token see cells that come later in the sequence, which would leak the next token in a
language model trained on every position (the paper only trains on the answer after the table). With grouped
key heads (GQA, MQA) a key head can carry one rotation only, so all query heads of a group follow the order of
the group's first query head (MQA: every head reads rows, i.e. plain RoPE). Positions depend only on each
token's own absolute position, so KV-cache decoding is exact; scores are not shift-invariant (the table is
anchored at ``start``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from attnlab.common import compute_dtype
from attnlab.errors import ConfigError
from attnlab.position.base import POSITIONS, PositionEncoding
from attnlab.position.rope import apply_rotary, rope_angles, rope_inv_freq

if TYPE_CHECKING:
    from attnlab.attention.core import Normaliser

Order = Literal["row", "col"]


class TPE2DParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    rows: int = Field(4, gt=0)
    cols: int = Field(4, gt=0)
    start: int = Field(0, ge=0)  # sequence position of the table's first token
    cell_tokens: int = Field(1, gt=0)  # tokens per cell, kept contiguous in both orders
    head_orders: list[Order] | None = None  # one per head; None: first half "row", second half "col"
    base: float = Field(10000.0, gt=1)
    interleaved: bool = False

    def check_site(self, site: object, field: str) -> None:
        n_heads = int(getattr(site, "n_heads", 0))
        if self.head_orders is not None and len(self.head_orders) != n_heads:
            raise ConfigError(f"{field}.head_orders", self.head_orders, f"needs one order per head ({n_heads})")


def column_major_positions(positions: Tensor, rows: int, cols: int, start: int = 0, cell_tokens: int = 1) -> Tensor:
    """p_col for sequence positions (= p_row); positions outside the table are returned unchanged."""
    rel = positions - start
    in_table = (rel >= 0) & (rel < rows * cols * cell_tokens)
    cell, offset = rel.div(cell_tokens, rounding_mode="floor"), rel % cell_tokens
    r, c = cell.div(cols, rounding_mode="floor"), cell % cols
    return torch.where(in_table, start + (c * rows + r) * cell_tokens + offset, positions)


def table_router(x_heads: Tensor, w1: Tensor, w2: Tensor, w3: Tensor) -> Tensor:
    """r = softmax(W3 (SiLU(W1 x) ⊙ W2 x)) per head and token: x_heads [B, H, T, d] → [B, H, T, J]."""
    hidden = F.silu(x_heads @ w1.T) * (x_heads @ w2.T)  # [B, H, T, 4d]
    return torch.softmax(hidden @ w3.T, dim=-1)


def table_order_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    gates: Tensor,
    orders: list[Tensor],
    *,
    normaliser: Normaliser,
    base: float = 10000.0,
    scale: float | None = None,
) -> Tensor:
    """The paper's mixture: Σ_j gates[..., j] · attention(RoPE at orders[j], causal in order j).

    q, k, v [B, H, T, d] before rotation (self-attention, no cache); gates [B, H, T, J]; orders J tensors [T].
    """
    dtype = compute_dtype(q)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    inv_freq = rope_inv_freq(q.shape[-1], base)
    out = torch.zeros(v.shape, dtype=dtype, device=v.device)
    for j, order in enumerate(orders):
        angles = rope_angles(order, inv_freq)
        qj, kj = apply_rotary(q.to(dtype), angles), apply_rotary(k.to(dtype), angles)
        visible = order[None, :] <= order[:, None]  # [T, T]: key n visible to query m in order j
        weights = normaliser((qj * scale) @ kj.transpose(-1, -2), visible)  # [B, H, T, T]
        out = out + gates[..., j : j + 1].to(dtype) * (weights @ v.to(dtype))
    return out.to(v.dtype)


@POSITIONS.register(
    "tpe2d",
    summary="RoPE over row-major or column-major table positions, one traversal order per head (2D-TPE, fixed router)",
    paper="Li et al. 2024, arXiv:2409.19700",
    params=TPE2DParams,
    cross=False,
)
class TablePositions2D(PositionEncoding):
    def __init__(self, params: TPE2DParams | None = None, site: object | None = None):
        super().__init__()
        params = params or TPE2DParams()
        self.d_head, n_heads = int(site.d_head), int(site.n_heads)  # type: ignore[union-attr]
        if self.d_head % 2:
            raise ValueError(f"tpe2d needs an even head dimension; got d_head={self.d_head}")
        params.check_site(site, "position_args")
        orders = params.head_orders or ["row"] * (n_heads // 2) + ["col"] * (n_heads - n_heads // 2)
        self.register_buffer("by_column", torch.tensor([o == "col" for o in orders]), persistent=False)  # [H]
        self.table = (params.rows, params.cols, params.start, params.cell_tokens)
        self.base, self.interleaved = params.base, params.interleaved

    def head_angles(self, positions: Tensor, by_column: Tensor) -> Tensor:
        """[H', T, d/2]: each head's RoPE angles in its traversal order."""
        inv_freq = rope_inv_freq(self.d_head, self.base)
        row = rope_angles(positions, inv_freq)  # [T, d/2]
        col = rope_angles(column_major_positions(positions, *self.table), inv_freq)
        return torch.where(by_column.to(positions.device)[:, None, None], col, row)

    def rotate(self, q: Tensor, k: Tensor, positions: Tensor) -> tuple[Tensor, Tensor]:
        n_rep = q.shape[1] // k.shape[1]
        by_kv_head = self.by_column[::n_rep]  # [Hkv]: a key head reads in its group's first query head's order
        rq = apply_rotary(q, self.head_angles(positions, by_kv_head.repeat_interleave(n_rep)), self.interleaved)
        rk = apply_rotary(k, self.head_angles(positions, by_kv_head), self.interleaved)
        return rq, rk
