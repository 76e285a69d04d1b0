"""A KV cache driven by a ``KVPolicy``: per-layer, per-head budgets, at prefill and while decoding.

Each layer's ``PolicyLayerCache`` fills through the attention module's ``cache.extend_rotated`` extension point
(``attnlab.attention.build``): it appends the new keys and values, measures the statistics its policy needs
(``scores.py``) and returns the keys the call attends to. Heads keep different tokens and, with Task-KV, different
numbers of them: tensors are [B, Hkv, S, ·] with each head's tokens in arrival order, right-aligned, and invalid
slots on the left of a head that holds fewer than S.

Attending to a ragged cache: the attention module takes no key mask, so a call whose heads hold different
numbers of tokens appends one channel to q and k — 1 to every query, 0 to a valid key and −inf to an invalid one —
so an invalid key's score is exactly −inf (weight 0) on every path, and q is scaled by √((d + 1)/d) so the default
scale 1/√(d + 1) of the wider head stays 1/√d (an explicit ``cfg.scale`` needs no correction). When every head holds
the same tokens (every policy but Task-KV, and Recycled Attention's top-K) nothing is added, and a budget at least
the length returns the very tensors a plain cache would.

Positions (``positions=``): ``"cache"`` (StreamingLLM's choice) gives a token the position of its slot: keys are
kept before RoPE and all rotated at their slot on every call, so a contiguous cache is what the model sees;
``"original"`` keeps every token at its input position (keys rotated once and cached, as Hugging Face's
``DynamicCache`` and kvpress do).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

from attnlab.attention.build import KVCache, LayerKVCache
from attnlab.errors import ConfigError
from attnlab.longctx.kv.base import HeadState, KVPolicy
from attnlab.longctx.kv.scores import measure
from attnlab.position.base import PositionEncoding

PER_SLOT_STATS = ("acc", "window", "last")


def attention_layers(model: nn.Module, *, scores: bool = False) -> list[Any]:
    """The model's self-attention modules, ``model.blocks[i].attn``, checked for a budgeted cache.

    Raises ConfigError for a layer the cache cannot drive: no KV-cache support, cross-attention, heads that rotate
    or cache something other than k and v (MLA, CLLA), a position that owns the attention (2D-TPE); with
    ``scores`` (a policy that reads attention weights, or heads of different sizes) also for anything but plain
    softmax attention over q·k (another normaliser, soft-capping, a score bias, heads with their own attention or
    a sliding window), whose weights the cache would not reproduce.
    """
    blocks = getattr(model, "blocks", None)
    if blocks is None or not all(hasattr(b, "attn") for b in blocks):
        raise ConfigError("model", type(model).__name__, "needs model.blocks[i].attn attention layers")
    layers = [b.attn for b in blocks]
    for i, attn in enumerate(layers):
        attn.cfg.check_kv_cache(attn.site, f"blocks.{i}.attn")
        if attn.site.cross:
            raise ConfigError(f"blocks.{i}.attn", "cross", "eviction is for self-attention")
        for what, owner in (("rotate", attn.heads), ("extend_cache", attn.heads), ("attend", attn.position)):
            if hasattr(owner, what):
                name = attn.cfg.heads if owner is attn.heads else attn.cfg.position
                raise ConfigError(f"blocks.{i}.attn", name, f"defines {what}(), which budgeted caching does not drive")
        if scores:
            plain = (
                attn.normaliser_name == "softmax"
                and attn.sdpa_ok
                and attn.position.score_mod() is None
                and attn.position.score_bias() is None
                and not hasattr(attn.heads, "attend")
                and attn.cfg.window is None
            )
            if not plain:
                what = f"{attn.normaliser_name} / {attn.cfg.heads} / {attn.cfg.position}"
                raise ConfigError(
                    f"blocks.{i}.attn", what, "this policy reads softmax weights of q·k", "plain softmax attention"
                )
    return layers


def visible(q: Tensor, k: Tensor, v: Tensor, mask: Tensor, scale: float | None) -> tuple[Tensor, Tensor, Tensor]:
    """(q, k, v) restricted to the slots ``mask`` [B, Hkv, S] marks, right-aligned per head (see the module doc)."""
    if bool(mask.all()):
        return q, k, v
    s = mask.shape[-1]
    n = mask.sum(-1)  # [B, Hkv]
    m = int(n.max())
    order = torch.where(mask, torch.arange(1, s + 1, device=mask.device), 0).argsort(dim=-1, stable=True)[..., s - m :]
    kk = k.gather(2, order[..., None].expand(*order.shape, k.shape[-1]))
    vv = v.gather(2, order[..., None].expand(*order.shape, v.shape[-1]))
    if bool((n == m).all()):
        return q, kk, vv
    pad = ~mask.gather(2, order)[..., None]  # [B, Hkv, M, 1]
    kk = torch.cat([kk.masked_fill(pad, 0.0), torch.zeros_like(kk[..., :1]).masked_fill(pad, float("-inf"))], -1)
    vv = vv.masked_fill(pad, 0.0)
    d = q.shape[-1]
    qq = q * math.sqrt((d + 1) / d) if scale is None else q
    return torch.cat([qq, torch.ones_like(q[..., :1])], -1), kk, vv


def check_positions(policy: KVPolicy | None, positions: str) -> None:
    """ConfigError for a position scheme that is unknown or that ``policy`` does not support."""
    if positions not in ("cache", "original"):
        raise ConfigError("positions", positions, "unknown position scheme", ["cache", "original"])
    if policy is not None and positions not in policy.positions:
        raise ConfigError("positions", positions, f"not supported by {policy.name}", policy.positions)


class PolicyLayerCache(LayerKVCache):
    """One layer's cache under a policy: k, v [B, Hkv, S, d], ``token_index`` / ``valid`` / statistics [B, Hkv, S].

    ``length`` is the position the next token gets: S with ``positions="cache"``, the tokens seen with
    ``"original"``.
    """

    def __init__(
        self,
        policy: KVPolicy | None,
        *,
        positions: str = "cache",
        scale: float | None = None,
        track: Iterable[str] = (),
        window: int = 32,
        kernel: int = 5,
    ) -> None:
        super().__init__()
        self.policy, self.positions, self.scale = policy, positions, scale
        self.track = frozenset(track) | (policy.needs if policy is not None else frozenset())
        self.window, self.kernel = window, kernel
        self.seen = 0  # tokens appended so far
        self.calls = 0  # forward calls so far
        self.head_out: Tensor | None = None

    @property
    def size(self) -> int:
        """Slots currently held (the largest head's token count)."""
        return 0 if self.k is None else int(self.k.shape[2])

    @property
    def token_index(self) -> Tensor | None:
        """[B, Hkv, S]: the input position of the token in each slot."""
        return self.store.get("token_index")

    @property
    def valid(self) -> Tensor | None:
        """[B, Hkv, S]: whether a slot holds a token."""
        return self.store.get("valid")

    @property
    def score(self) -> Tensor | None:
        """[B, Hkv, S]: H2O's accumulated attention per slot (float64), when tracked."""
        return self.store.get("acc")

    def kept(self) -> Tensor:
        """[B, Hkv]: tokens each head holds."""
        return self.store["valid"].sum(-1)

    def state(self) -> HeadState:
        """What the policy sees."""
        stats = {name: self.store[name] for name in PER_SLOT_STATS if name in self.store}
        return HeadState(self.store["valid"], self.store["token_index"], stats, self.head_out)

    def append(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Not used: the attention layer calls ``extend_rotated`` on a cache that has it."""
        raise RuntimeError("a PolicyLayerCache is filled through extend_rotated (attnlab.attention.build)")

    def extend_rotated(self, position: PositionEncoding, q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, ...]:
        """Append k [B, Hkv, T, d], v; return (rotated q, the keys and values this call attends to)."""
        b, h_kv, t = k.shape[0], k.shape[1], k.shape[2]
        dev = k.device
        if self.positions == "cache":
            k_all = self.append_to("k", k)
            s = k_all.shape[2]
            rq, _ = position.rotate(q, q, torch.arange(s - t, s, device=dev))
            _, rk = position.rotate(k_all, k_all, torch.arange(s, device=dev))
        else:
            rq, rk_new = position.rotate(q, k, torch.arange(self.seen, self.seen + t, device=dev))
            rk = self.append_to("k", rk_new)
        v_all = self.append_to("v", v)
        self.append_to("token_index", torch.arange(self.seen, self.seen + t, device=dev).expand(b, h_kv, t))
        valid = self.append_to("valid", torch.ones(b, h_kv, t, dtype=torch.bool, device=dev))
        for name in sorted(self.track & set(PER_SLOT_STATS)):
            dtype = torch.float64 if name == "acc" else torch.float32
            self.append_to(name, torch.zeros(b, h_kv, t, dtype=dtype, device=dev))
        if "active" in self.store:
            self.append_to("active", torch.ones(b, h_kv, t, dtype=torch.bool, device=dev))
        self.seen += t
        self.length = rk.shape[2] if self.positions == "cache" else self.seen
        full = self.policy is None or self.policy.full_step(self.calls)
        self.calls += 1
        if full and self.track:
            scale = self.scale if self.scale is not None else q.shape[-1] ** -0.5
            stats = measure(self.track, rq, rk, v_all, valid, scale, self.window, self.kernel)
            if "acc" in stats:
                stats["acc"] = self.store["acc"] + stats["acc"]
            self.head_out = stats.pop("head_out", self.head_out)
            self.store.update(stats)
        if full and self.policy is not None:
            self.refresh()
        mask = valid if full or "active" not in self.store else valid & self.store["active"]
        return visible(rq, rk, v_all, mask, self.scale)

    def refresh(self) -> None:
        """Ask the policy which slots the calls until the next full step attend to (Recycled Attention)."""
        active = self.policy.refresh(self.state()) if self.policy is not None else None
        if active is not None:
            self.store["active"] = active

    def observe(self, weights: Tensor) -> None:
        """Add an attention pattern [B, Hq, Tq, S] to H2O's scores: Σ over queries and the group's query heads."""
        score = self.score
        if score is None or weights.shape[-1] != score.shape[-1]:
            raise ValueError(f"pattern {tuple(weights.shape)} does not match a cache of {self.size} tokens")
        b, h_q, t_q, s = weights.shape
        h_kv = score.shape[1]
        grouped = weights.detach().to(torch.float64).reshape(b, h_kv, h_q // h_kv, t_q, s)
        self.store["acc"] = score + grouped.sum((2, 3))

    def compress(self, layer: int, budget: Tensor) -> None:
        """Keep what the policy selects for this layer under ``budget`` [Hkv] (no-op without a policy)."""
        if self.policy is None or self.k is None:
            return
        keep = self.policy.select(layer, self.state(), budget.to(self.k.device))
        if not bool((keep == self.store["valid"]).all()):
            self.compact(keep)

    def compact(self, keep: Tensor) -> None:
        """Drop every slot not in ``keep`` [B, Hkv, S]; each head's tokens stay in order, right-aligned."""
        s = keep.shape[-1]
        m = int(keep.sum(-1).max())
        order = torch.where(keep, torch.arange(1, s + 1, device=keep.device), 0).argsort(dim=-1, stable=True)[
            ..., s - m :
        ]
        for name, t in list(self.store.items()):
            index = order if t.dim() == 3 else order[..., None].expand(*order.shape, t.shape[-1])
            self.store[name] = t.gather(2, index)
        self.store["valid"] = keep.gather(2, order)
        if self.positions == "cache":
            self.length = m


class PolicyKVCache(KVCache):
    """A ``KVCache`` of ``PolicyLayerCache`` layers for ``model``: ``step()`` after each forward call,
    ``compress()`` after a prompt.

    ``policy=None`` keeps everything (the full cache); ``track`` names statistics to measure anyway, so that one
    prompt pass can be forked into several policies (``fork``). ``window`` and ``kernel`` are the observation
    window and pooling of the ``window`` statistic (taken from the policy when it has them).
    """

    def __init__(
        self,
        model: nn.Module,
        policy: KVPolicy | None = None,
        *,
        positions: str = "cache",
        track: Iterable[str] = (),
        window: int | None = None,
        kernel: int | None = None,
    ) -> None:
        super().__init__(0)
        self.policy, self.positions = policy, positions
        check_positions(policy, positions)
        self.track = frozenset(track) | (policy.needs if policy is not None else frozenset())
        self.window = window if window is not None else getattr(policy, "window", 32)
        self.kernel = kernel if kernel is not None else getattr(policy, "kernel", 5)
        attns = attention_layers(model, scores=bool(self.track))
        self.layers = [
            PolicyLayerCache(
                policy,
                positions=positions,
                scale=attn.cfg.scale,
                track=self.track,
                window=self.window,
                kernel=self.kernel,
            )
            for attn in attns
        ]

    @property
    def seen(self) -> int:
        """Tokens fed so far."""
        return self.layers[0].seen if self.layers else 0

    def budget_table(self) -> Tensor:
        """[n_layers, n_kv_heads]: the policy's budgets at the current length."""
        assert self.policy is not None
        n_kv = self.layers[0].k.shape[1]  # type: ignore[union-attr]
        return self.policy.budgets(len(self.layers), n_kv, self.seen)

    def compress(self) -> None:
        """Bring every layer to the policy's budgets (after a prompt, or after a step for ``while_decoding``)."""
        if self.policy is None or self.layers[0].k is None:
            return
        table = self.budget_table()
        for i, layer in enumerate(self.layers):
            layer.compress(i, table[i])

    def step(self) -> None:
        """After a forward call: hold the budget if the policy evicts while decoding."""
        if self.policy is not None and self.policy.while_decoding:
            self.compress()

    def kept(self) -> Tensor:
        """[n_layers, B, Hkv]: tokens each head holds."""
        return torch.stack([layer.kept() for layer in self.layers])

    def fork(self, policy: KVPolicy | None) -> PolicyKVCache:
        """This cache's tokens and statistics under another policy, which may need only statistics this cache
        tracked (the tensors are shared, never written in place; statistics the policy does not need are dropped).
        Call ``compress()`` on it to apply the policy's budgets."""
        check_positions(policy, self.positions)
        needs = policy.needs if policy is not None else frozenset()
        if needs - self.track:
            missing = sorted(needs - self.track)
            raise ConfigError(
                "policy", getattr(policy, "name", None), f"needs {missing}, which the prompt did not track"
            )
        for name in ("window", "kernel"):
            mine, theirs = getattr(self, name), getattr(policy, name, None)
            if "window" in needs and theirs != mine:
                raise ConfigError(f"{policy.name}.{name}", theirs, f"the prompt was measured with {name} {mine}")  # type: ignore[union-attr]
        new = object.__new__(PolicyKVCache)
        new.policy, new.positions, new.track = policy, self.positions, needs
        new.window, new.kernel = self.window, self.kernel
        new.layers = []
        dropped = set(PER_SLOT_STATS) - needs
        for old in self.layers:
            layer = PolicyLayerCache(
                policy, positions=self.positions, scale=old.scale, window=self.window, kernel=self.kernel
            )
            layer.store = {name: t for name, t in old.store.items() if name not in dropped and name != "active"}
            layer.length, layer.seen, layer.calls = old.length, old.seen, old.calls
            layer.head_out = old.head_out if "head_out" in needs else None
            layer.refresh()
            new.layers.append(layer)
        return new
