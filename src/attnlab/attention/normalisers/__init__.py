"""Normalisers (scores → weights), one file each; importing this package registers them all."""

from attnlab.attention.normalisers import clipped_softmax, cog, sigmoid, softmax, softplus
from attnlab.attention.normalisers.base import NORMALISERS, NormaliserBase

__all__ = ["NORMALISERS", "NormaliserBase", "clipped_softmax", "cog", "sigmoid", "softmax", "softplus"]
