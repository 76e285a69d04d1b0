"""Kernel ("linear") attention: feature maps φ and the mechanisms built on them, one file each.

Each mechanism registers in ``NORMALISERS`` (its quadratic view is the reference: ``attend``) and declares
its fast paths (``chunked``, ``recurrent``) as backends; feature maps register in ``FEATURE_MAPS``.
"""

from attnlab.registry_imports import import_submodules

MODULES = import_submodules(__name__, __path__)

__all__ = ["MODULES"]
