"""Position encodings, one file each; importing this package registers them all."""

from attnlab.position import absolute, alibi, base, rope
from attnlab.position.base import POSITIONS, PositionEncoding

__all__ = ["POSITIONS", "PositionEncoding", "absolute", "alibi", "base", "rope"]
