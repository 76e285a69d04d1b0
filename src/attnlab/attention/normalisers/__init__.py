"""Normalisers (scores → weights), one file each; importing this package registers them all."""

from attnlab.attention.normalisers.base import NORMALISERS, NormaliserBase
from attnlab.registry_imports import import_submodules

MODULES = import_submodules(__name__, __path__)

__all__ = ["MODULES", "NORMALISERS", "NormaliserBase"]
