"""KV-cache eviction: decode with a cache held to a fixed budget and measure the perplexity it costs.

Three policies, each keeping ``budget`` tokens per layer after every forward call:

- ``streaming`` — StreamingLLM (Xiao et al., "Efficient Streaming Language Models with Attention Sinks", ICLR 2024,
  arXiv:2309.17453): the first ``n_sink`` tokens (4, the attention sinks) plus the most recent
  ``budget − n_sink``;
- ``h2o`` — Heavy-Hitter Oracle (Zhang et al., "H2O: Heavy-Hitter Oracle for Efficient Generative Inference of
  Large Language Models", NeurIPS 2023, arXiv:2306.14048): the most recent ``n_recent`` tokens plus the
  ``budget − n_recent`` older tokens with the largest accumulated attention

      score_j = Σ_{queries i so far} Σ_{query heads h of the KV group} A^h[i, j]

  per layer and per key/value head (so different heads may keep different tokens; with GQA the query heads that
  share a key/value head add up). ``n_recent`` defaults to ``budget // 2``: the paper's equal heavy and recent
  budgets. Scores are plain sums (older tokens have been seen by more queries), as in the paper;
- ``recent`` — a sliding window of the last ``budget`` tokens, the baseline that shows why sinks matter.

Positions (``positions=``): ``"cache"`` (default) is StreamingLLM's choice — a token's position is its slot in the
cache, so a cache holding tokens [0, 1, 2, 3, 6, 7, 8] decodes token 9 at position 7 and the keys at 0 … 6. The cache
therefore keeps keys *before* RoPE and rotates all of them at their current slot on every forward call (a relative
encoding then sees a contiguous cache; an absolute one is embedded at ``cache.length``, the cache size).
``"original"`` keeps every token at its true position: keys are rotated once and cached, as Hugging Face's
``DynamicCache`` does, which is how the H2O code runs. This uses the attention module's ``cache.extend_rotated``
extension point (``attnlab.attention.build``).

Chunked evaluation: ``chunk`` tokens go through the model per call against the evicted cache, then the cache is
evicted back to the budget. ``chunk=1`` is exact token-by-token decoding; with ``chunk = c`` a query sees between
``budget`` and ``budget + c − 1`` earlier tokens (the earlier tokens of its own chunk are not yet evicted), so the
cache is up to ``c − 1`` tokens larger than the budget inside a chunk. ``chunk = 1`` through SmolLM2-135M costs
~0.06 s a token on 2 cores; chunks of 16–32 make a 2k-token table a few minutes.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from pydantic import Field, model_validator
from torch import Tensor, nn

from attnlab.attention.build import KVCache, LayerKVCache
from attnlab.config import StrictModel
from attnlab.errors import ConfigError
from attnlab.hook_points import hooks
from attnlab.lens.losses import next_token_nll
from attnlab.position.base import PositionEncoding

POLICIES = ("streaming", "h2o", "recent")


class EvictionConfig(StrictModel):
    """Which tokens a budgeted KV cache keeps. ``budget=None`` keeps every token (the full cache)."""

    policy: Literal["streaming", "h2o", "recent"] = "streaming"
    budget: int | None = Field(None, gt=0)
    n_sink: int = Field(4, ge=0)  # streaming: the first tokens always kept
    n_recent: int | None = Field(None, ge=0)  # h2o: the recent window; None: budget // 2
    positions: Literal["cache", "original"] = "cache"

    @model_validator(mode="after")
    def _fits(self) -> EvictionConfig:
        if self.budget is not None:
            if self.policy == "streaming" and self.n_sink >= self.budget:
                raise ConfigError("n_sink", self.n_sink, f"must be below the budget {self.budget}")
            if self.policy == "h2o" and self.n_recent is not None and self.n_recent > self.budget:
                raise ConfigError("n_recent", self.n_recent, f"must not exceed the budget {self.budget}")
        return self

    @property
    def recent(self) -> int:
        """The h2o recent window: ``n_recent`` or half the budget."""
        if self.budget is None:
            return 0
        return self.n_recent if self.n_recent is not None else self.budget // 2

    @property
    def label(self) -> str:
        """``full`` or ``policy@budget``."""
        return "full" if self.budget is None else f"{self.policy}@{self.budget}"


def keep_slots(
    policy: str, size: int, budget: int, *, scores: Tensor | None = None, n_sink: int = 4, n_recent: int = 0
) -> Tensor:
    """The cache slots to keep, ascending: [budget] (the same for every head) or [B, Hkv, budget] for ``h2o``.

    ``size`` is the number of tokens in the cache, slot 0 the oldest. ``streaming``: slots 0 … n_sink − 1 and the last
    ``budget − n_sink``; ``recent``: the last ``budget``; ``h2o``: the last ``n_recent`` and, among the others, the
    ``budget − n_recent`` with the largest ``scores`` [B, Hkv, size] (ties go to the lower slot).
    """
    if policy not in POLICIES:
        raise ConfigError("policy", policy, "unknown eviction policy", POLICIES)
    if budget >= size:
        return torch.arange(size)
    if policy == "recent":
        return torch.arange(size - budget, size)
    if policy == "streaming":
        return torch.cat([torch.arange(n_sink), torch.arange(size - (budget - n_sink), size)])
    if scores is None:
        raise ValueError("h2o eviction needs the accumulated attention scores [B, Hkv, size]")
    recent = torch.arange(size - n_recent, size, device=scores.device)
    old = scores[..., : size - n_recent]
    # stable descending sort: among equal scores the older slot wins, so the choice is deterministic
    order = torch.sort(old, dim=-1, descending=True, stable=True).indices[..., : budget - n_recent]
    heavy = order.sort(dim=-1).values
    return torch.cat([heavy, recent.expand(*heavy.shape[:-1], n_recent)], dim=-1)


class EvictingLayerCache(LayerKVCache):
    """One layer's budgeted cache: keys, values, each token's index in the input and its h2o score.

    Tensors are [B, Hkv, S, d] (keys before RoPE with ``positions="cache"``, after it with ``"original"``),
    ``token_index`` and ``score`` [B, Hkv, S]. ``length`` is the position the next token gets: the cache size with
    ``positions="cache"``, the number of tokens seen with ``"original"``.
    """

    def __init__(self, cfg: EvictionConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.seen = 0

    @property
    def size(self) -> int:
        """Tokens currently held."""
        return 0 if self.k is None else int(self.k.shape[2])

    @property
    def token_index(self) -> Tensor | None:
        """[B, Hkv, S]: the input position of the token in each slot."""
        return self.store.get("token_index")

    @property
    def score(self) -> Tensor | None:
        """[B, Hkv, S]: each slot's accumulated attention (float64; zero unless the h2o hooks are on)."""
        return self.store.get("score")

    def append(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Not used: the attention layer calls ``extend_rotated`` on a cache that has it."""
        raise RuntimeError("an EvictingLayerCache is filled through extend_rotated (attnlab.attention.build)")

    def extend_rotated(self, position: PositionEncoding, q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, ...]:
        """Append the new k [B, Hkv, T, d], v; return (rotated q, all rotated keys, all values).

        ``positions="cache"``: q at slots S − T … S − 1 and the keys at 0 … S − 1 (S after appending), from the
        cached unrotated keys. ``"original"``: q and the new keys at their input positions; older keys as cached.
        """
        b, h_kv, t = k.shape[0], k.shape[1], k.shape[2]
        new_index = torch.arange(self.seen, self.seen + t, device=k.device).expand(b, h_kv, t)
        if self.cfg.positions == "cache":
            k_all, v_all = self.append_to("k", k), self.append_to("v", v)
            s = k_all.shape[2]
            rq, _ = position.rotate(q, q, torch.arange(s - t, s, device=q.device))
            _, rk = position.rotate(k_all, k_all, torch.arange(s, device=q.device))
        else:
            rq, rk_new = position.rotate(q, k, torch.arange(self.seen, self.seen + t, device=q.device))
            rk, v_all = self.append_to("k", rk_new), self.append_to("v", v)
        self.append_to("token_index", new_index)
        self.append_to("score", torch.zeros(b, h_kv, t, dtype=torch.float64, device=k.device))
        self.seen += t
        self.length = self.size if self.cfg.positions == "cache" else self.seen
        return rq, rk, v_all

    def observe(self, weights: Tensor) -> None:
        """Add an attention pattern [B, Hq, Tq, S] to the h2o scores: Σ over queries and the group's query heads."""
        score = self.score
        if score is None or weights.shape[-1] != score.shape[-1]:
            raise ValueError(f"pattern {tuple(weights.shape)} does not match a cache of {self.size} tokens")
        b, h_q, t_q, s = weights.shape
        h_kv = score.shape[1]
        grouped = weights.detach().to(torch.float64).reshape(b, h_kv, h_q // h_kv, t_q, s)
        self.store["score"] = score + grouped.sum((2, 3))

    def evict(self) -> None:
        """Drop tokens until ``budget`` are left, by the policy (no-op without a budget or below it)."""
        cfg = self.cfg
        if cfg.budget is None or self.size <= cfg.budget:
            return
        slots = keep_slots(
            cfg.policy, self.size, cfg.budget, scores=self.score, n_sink=cfg.n_sink, n_recent=cfg.recent
        ).to(self.k.device)  # type: ignore[union-attr]
        for name, t in list(self.store.items()):
            if slots.dim() == 1:  # the same slots in every head
                self.store[name] = t.index_select(2, slots)
            else:  # per head (h2o): [B, Hkv, budget], widened over d for k and v
                index = slots if t.dim() == 3 else slots[..., None].expand(*slots.shape, t.shape[-1])
                self.store[name] = t.gather(2, index)
        if cfg.positions == "cache":
            self.length = self.size


class EvictingKVCache(KVCache):
    """A ``KVCache`` whose layers are ``EvictingLayerCache``; call ``evict()`` after each forward pass."""

    def __init__(self, n_layers: int, cfg: EvictionConfig) -> None:
        super().__init__(0)
        self.cfg = cfg
        self.layers = [EvictingLayerCache(cfg) for _ in range(n_layers)]

    def evict(self) -> None:
        """Evict every layer to the budget."""
        for layer in self.layers:
            layer.evict()


def attention_layers(model: nn.Module) -> list[Any]:
    """The model's self-attention modules, ``model.blocks[i].attn``, checked for budgeted decoding.

    Raises ConfigError for a layer the eviction cache cannot drive: no KV-cache support, cross-attention, heads that
    rotate or cache something other than k and v (MLA, CLLA) or a position that owns the attention (2D-TPE).
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
    return layers


@dataclass
class DecodeResult:
    """What ``decode_with_eviction`` returns."""

    nll: Tensor  # [B, N − 1] nats: entry t is −log p(token t + 1 | what the cache kept)
    cache: EvictingKVCache
    logits: Tensor | None = None  # [B, N, V] when asked for
    seconds: float = 0.0

    @property
    def perplexity(self) -> float:
        """exp(mean NLL) over every predicted token."""
        return math.exp(float(self.nll.mean()))


@torch.no_grad()
def decode_with_eviction(
    model: nn.Module, tokens: Tensor, cfg: EvictionConfig, chunk: int = 1, keep_logits: bool = False
) -> DecodeResult:
    """Feed ``tokens`` [B, N] through ``model(tokens, cache)`` ``chunk`` tokens at a time, evicting after each call.

    The model is any attnlab causal LM built from ``build_attention`` layers in ``model.blocks`` (``TransformerLM``,
    the SmolLM2 ``LlamaLM``). With ``policy="h2o"`` every layer's ``hook_pattern`` feeds the scores (so those layers
    run the reference attention instead of SDPA). Returns per-token NLL, the final cache and, with ``keep_logits``,
    the logits.
    """
    if tokens.dim() != 2 or tokens.shape[1] < 2:
        raise ConfigError("tokens", tuple(tokens.shape), "must be [batch, time] with at least 2 tokens")
    if chunk < 1:
        raise ConfigError("chunk", chunk, "must be at least 1")
    layers = attention_layers(model)
    cache = EvictingKVCache(len(layers), cfg)
    observers = {}
    if cfg.policy == "h2o" and cfg.budget is not None:
        observers = {f"blocks.{i}.attn.hook_pattern": cache[i].observe for i in range(len(layers))}
    nll, kept, previous = [], [], None
    t0 = time.perf_counter()
    with hooks(model, observers):
        for start in range(0, tokens.shape[1], chunk):
            piece = tokens[:, start : start + chunk]
            logits = model(piece, cache).float()
            cache.evict()
            rows = logits if previous is None else torch.cat([previous, logits], dim=1)
            targets = piece if previous is None else torch.cat([tokens[:, start - 1 : start], piece], dim=1)
            nll.append(next_token_nll(rows, targets))  # rows[:, i] predicts targets[:, i + 1]
            previous = logits[:, -1:]
            if keep_logits:
                kept.append(logits)
    return DecodeResult(
        nll=torch.cat(nll, dim=1),
        cache=cache,
        logits=torch.cat(kept, dim=1) if keep_logits else None,
        seconds=time.perf_counter() - t0,
    )


# --------------------------------------------------------------------------------------------------- the experiment
@dataclass(frozen=True)
class EvictionRow:
    """One cell of the perplexity-vs-budget table."""

    policy: str  # "full" for the unbudgeted cache
    budget: int | None
    perplexity: float
    nll: float  # mean nats per token
    perplexity_after_budget: float  # over predictions from token index `budget` on (= perplexity for "full")
    seconds: float


def eviction_table(
    model: nn.Module,
    tokens: Tensor,
    budgets: Sequence[int],
    policies: Iterable[str] = POLICIES,
    *,
    chunk: int = 16,
    n_sink: int = 4,
    n_recent: int | None = None,
    positions: str = "cache",
) -> list[EvictionRow]:
    """Perplexity of ``model`` on ``tokens`` [1, N] per policy and budget, plus the full cache (``budget=None``).

    ``perplexity_after_budget`` averages only the predictions from token index ``budget`` on (earlier queries saw
    at most ``budget`` tokens, nothing had been evicted, and every policy equals the full cache).
    """
    policies = list(policies)
    for p in policies:
        if p not in POLICIES:
            raise ConfigError("policy", p, "unknown eviction policy", POLICIES)
    for b in budgets:
        if b < 1:
            raise ConfigError("budget", b, "must be at least 1")
    full = decode_with_eviction(model, tokens, EvictionConfig(budget=None), chunk)
    rows = [_row("full", None, full, 0)]
    for budget in budgets:
        for policy in policies:
            cfg = EvictionConfig(policy=policy, budget=budget, n_sink=n_sink, n_recent=n_recent, positions=positions)
            rows.append(_row(policy, budget, decode_with_eviction(model, tokens, cfg, chunk), budget))
    return rows


def _row(policy: str, budget: int | None, res: DecodeResult, skip: int) -> EvictionRow:
    tail = res.nll[:, skip:] if skip < res.nll.shape[1] else res.nll[:, -1:]
    return EvictionRow(
        policy=policy,
        budget=budget,
        perplexity=res.perplexity,
        nll=float(res.nll.mean()),
        perplexity_after_budget=math.exp(float(tail.mean())),
        seconds=res.seconds,
    )
