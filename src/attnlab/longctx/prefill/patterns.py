"""One pattern at one budget: ``PatternSpec(name, keys).build(q, k, scale)`` → a ``BlockLayout`` (None: dense).

``keys`` is the budget of keys per query besides its own (diagonal) block, shared by every pattern so that their
perplexities can be compared at a cost; the layout's ``density()`` is what each actually computes:

- ``a-shape``: 1 sink block and ``keys / block − 1`` local blocks;
- ``vertical-slash``: ``keys / 4`` columns and ``3 keys / 4`` diagonals (MInference's default sizes, 1000 and 6096,
  are in about that ratio), each diagonal computed as the aligned blocks it crosses;
- ``block-topk``: the ``keys / block`` best key blocks;
- ``hip``: 1 sink block, 1 local block and ``keys / block − 2`` blocks by hierarchical pruning;
- ``minference``: per head, whichever of a-shape, vertical-slash and block-topk the offline search chose for it
  (``search.py``), its indices estimated online as above.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from attnlab.errors import ConfigError
from attnlab.longctx.prefill.a_shape import a_shape_layout
from attnlab.longctx.prefill.block_topk import block_topk
from attnlab.longctx.prefill.hip import hip_layout
from attnlab.longctx.prefill.layout import BlockLayout, select_heads
from attnlab.longctx.prefill.vertical_slash import vertical_slash

PATTERNS = ("dense", "a-shape", "vertical-slash", "block-topk", "hip", "minference")
SEARCHED = ("a-shape", "vertical-slash", "block-topk")  # MInference's three head types
BLOCK = 64  # MInference's block_size_M = block_size_N


@dataclass(frozen=True)
class PatternSpec:
    """A named pattern with a key budget; ``heads`` (``minference`` only): the searched type index per head."""

    name: str
    keys: int = 1024
    block: int = BLOCK
    heads: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.name not in PATTERNS:
            raise ConfigError("pattern", self.name, "unknown sparse prefill pattern", PATTERNS)
        if self.keys < 2 * self.block and self.name != "dense":
            raise ConfigError("keys", self.keys, f"the key budget must be at least 2 blocks ({2 * self.block})")
        if self.name == "minference" and self.heads is None:
            raise ConfigError("minference.heads", None, "run the offline search first (search.search_layer)")

    @property
    def label(self) -> str:
        return self.name if self.name == "dense" else f"{self.name}@{self.keys}"

    def build(self, q: Tensor, k: Tensor, scale: float) -> BlockLayout | None:
        """The layout for q [H, T, D], k [Hkv, T, D] (None for dense)."""
        if self.name == "dense":
            return None
        if self.name == "minference":
            assert self.heads is not None
            kinds = sorted(set(self.heads))
            built = [PatternSpec(SEARCHED[c], self.keys, self.block).build(q, k, scale) for c in kinds]
            layouts = [lay for lay in built if lay is not None]
            return select_heads(layouts, q.new_tensor([kinds.index(c) for c in self.heads]).long())
        nb = self.keys // self.block
        if self.name == "a-shape":
            return a_shape_layout(q.shape[0], q.shape[1], self.block, 1, nb - 1, q.device)
        if self.name == "vertical-slash":
            return vertical_slash(q, k, self.keys // 4, self.keys - self.keys // 4, self.block, scale)
        if self.name == "block-topk":
            return block_topk(q, k, nb, self.block)
        return hip_layout(q, k, max(1, nb - 2), self.block, sink=1, local=1)
