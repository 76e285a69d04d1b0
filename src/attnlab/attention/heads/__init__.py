"""Head / projection variants, one file each; importing this package registers them all."""

from attnlab.attention.heads.base import HEADS, MultiHead
from attnlab.registry_imports import import_submodules

MODULES = import_submodules(__name__, __path__)

__all__ = ["HEADS", "MODULES", "MultiHead"]
