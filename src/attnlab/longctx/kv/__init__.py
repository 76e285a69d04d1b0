"""KV-cache policies behind one interface (``KVPolicy``), the cache they drive and the loops that feed it.

One policy per file: ``streaming`` (StreamingLLM), ``h2o`` (H2O), ``recent``, ``snapkv`` (SnapKV), ``pyramidkv``
(PyramidKV), ``tova`` (TOVA), ``taskkv`` (Task-KV), ``recycled`` (Recycled Attention). ``make_policy(name,
budget=…, **params)`` builds one; docs/kv_policies.md gives each method's rule and source.
"""

from __future__ import annotations

from typing import Any

from attnlab.errors import ConfigError
from attnlab.longctx.kv.base import HeadState, KVPolicy, keep_top
from attnlab.longctx.kv.cache import PolicyKVCache, PolicyLayerCache, attention_layers
from attnlab.longctx.kv.h2o import H2OPolicy
from attnlab.longctx.kv.pyramidkv import PyramidKVPolicy
from attnlab.longctx.kv.recent import RecentPolicy
from attnlab.longctx.kv.recycled import RecycledPolicy
from attnlab.longctx.kv.run import decode, prefill
from attnlab.longctx.kv.snapkv import SnapKVPolicy
from attnlab.longctx.kv.streaming import StreamingPolicy
from attnlab.longctx.kv.taskkv import TaskKVPolicy
from attnlab.longctx.kv.tova import TOVAPolicy

POLICIES: dict[str, type[KVPolicy]] = {
    cls.name: cls
    for cls in (
        StreamingPolicy,
        H2OPolicy,
        RecentPolicy,
        SnapKVPolicy,
        PyramidKVPolicy,
        TOVAPolicy,
        TaskKVPolicy,
        RecycledPolicy,
    )
}


def make_policy(name: str, budget: int | None = None, **params: Any) -> KVPolicy:
    """The policy ``name`` with ``budget`` tokens per key/value head on average and its own ``params``."""
    if name not in POLICIES:
        raise ConfigError("policy", name, "unknown KV-cache policy", list(POLICIES))
    return POLICIES[name](budget=budget, **params)


__all__ = [
    "POLICIES",
    "HeadState",
    "KVPolicy",
    "PolicyKVCache",
    "PolicyLayerCache",
    "attention_layers",
    "decode",
    "keep_top",
    "make_policy",
    "prefill",
]
