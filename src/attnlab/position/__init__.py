"""Position encodings, one file each; importing this package registers them all."""

from attnlab.position.base import POSITIONS, PositionEncoding
from attnlab.registry_imports import import_submodules

MODULES = import_submodules(__name__, __path__)

__all__ = ["MODULES", "POSITIONS", "PositionEncoding"]
