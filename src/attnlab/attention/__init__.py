"""Attention: the reference computation, the registries of the four axes, and the module builder."""

from attnlab.attention import linear  # noqa: F401  (registers the kernel-attention family)
from attnlab.attention.build import Attention, KVCache, LayerKVCache, build_attention, build_input_position
from attnlab.attention.config import AttentionConfig, AttentionSite
from attnlab.attention.core import AttnOutput, ScoreMod, attend_reference, causal_mask
from attnlab.attention.heads import HEADS
from attnlab.attention.normalisers import NORMALISERS

__all__ = [
    "HEADS",
    "NORMALISERS",
    "Attention",
    "AttentionConfig",
    "AttentionSite",
    "AttnOutput",
    "KVCache",
    "LayerKVCache",
    "ScoreMod",
    "attend_reference",
    "build_attention",
    "build_input_position",
    "causal_mask",
]
