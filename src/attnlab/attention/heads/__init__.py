"""Head / projection variants; importing this package registers them all."""

from attnlab.attention.heads import base, gated
from attnlab.attention.heads.base import HEADS, MultiHead

__all__ = ["HEADS", "MultiHead", "base", "gated"]
