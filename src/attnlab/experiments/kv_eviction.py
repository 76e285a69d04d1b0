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
``DynamicCache`` does, which is how the H2O code runs. The cache, the policies and the decoding loop are
``attnlab.longctx.kv`` (``PolicyKVCache``, through the attention module's ``cache.extend_rotated`` extension point);
this module is the experiment: its configuration, the perplexity table and the CLI's defaults.

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
from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import Tensor, nn

from attnlab.config import StrictModel
from attnlab.errors import ConfigError
from attnlab.lens.losses import next_token_nll
from attnlab.longctx.kv import KVPolicy, PolicyKVCache, decode, make_policy

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


def policy_of(cfg: EvictionConfig) -> KVPolicy:
    """The ``attnlab.longctx.kv`` policy that ``cfg`` describes."""
    if cfg.policy == "streaming":
        return make_policy("streaming", cfg.budget, n_sink=cfg.n_sink)
    if cfg.policy == "h2o":
        return make_policy("h2o", cfg.budget, n_recent=cfg.recent if cfg.budget is not None else None)
    return make_policy(cfg.policy, cfg.budget)


@dataclass
class DecodeResult:
    """What ``decode_with_eviction`` returns."""

    nll: Tensor  # [B, N − 1] nats: entry t is −log p(token t + 1 | what the cache kept)
    cache: PolicyKVCache
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
    the SmolLM2 ``LlamaLM``), driven by ``attnlab.longctx.kv.PolicyKVCache`` (H2O's scores are measured inside the
    cache, so every layer keeps its fused attention path). Returns per-token NLL, the final cache and, with
    ``keep_logits``, the logits.
    """
    if tokens.dim() != 2 or tokens.shape[1] < 2:
        raise ConfigError("tokens", tuple(tokens.shape), "must be [batch, time] with at least 2 tokens")
    if chunk < 1:
        raise ConfigError("chunk", chunk, "must be at least 1")
    cache = PolicyKVCache(model, policy_of(cfg), positions=cfg.positions)
    nll, kept, previous = [], [], None
    t0 = time.perf_counter()
    for start, logits in zip(range(0, tokens.shape[1], chunk), decode(model, tokens, cache, chunk), strict=True):
        piece = tokens[:, start : start + chunk]
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
