"""The one interface every KV-cache policy implements, and the selection helpers they share.

A policy answers two questions, per layer and per key/value head:

- **how many** tokens each head keeps: ``budgets(n_layers, n_kv_heads, length) -> [n_layers, n_kv_heads]``
  (uniform by default; PyramidKV's shrink with depth; Task-KV moves a layer's budget between its heads in
  ``select``, from what it observed);
- **which** ones: ``select(layer, state, budget) -> keep [B, Hkv, S]``, from the ``HeadState`` the cache hands over
  (which slots hold a token, each slot's token index and the attention statistics the policy ``needs``).

``budget`` (the policy's field) is the average number of tokens a key/value head keeps, so a layer keeps
``n_kv_heads · budget`` and the model ``n_layers · n_kv_heads · budget``: kvpress's ``compression_ratio`` r on a
prompt of n tokens is ``budget = round((1 − r) · n)`` (NVIDIA/kvpress, ``kvpress/presses/base_press.py``).
``budget=None`` keeps every token, and a budget at least the number of tokens seen keeps them all too.

When a policy acts: ``while_decoding`` policies (StreamingLLM, H2O, TOVA, recent) hold the budget after every
forward call; the others (SnapKV, PyramidKV, Task-KV) compress once, when the cache's owner calls ``compress()``
after the prompt, and let the cache grow while decoding, as kvpress does. Recycled Attention evicts nothing; it
chooses the keys a call attends to (``full_step`` / ``refresh``).

Slot order: within a head, slots hold tokens in the order they arrived (slot 0 the oldest); a head that keeps
fewer tokens than another has invalid slots on the left (``state.valid`` False).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from pydantic import Field
from torch import Tensor

from attnlab.config import StrictModel

STATS = ("acc", "window", "last", "head_out")  # what a policy may ask the cache to measure (see cache.py)


@dataclass
class HeadState:
    """What a layer's cache shows a policy: tensors [B, Hkv, S] unless said otherwise."""

    valid: Tensor  # bool: the slot holds a token
    token_index: Tensor  # long: the token's index in the input
    stats: dict[str, Tensor] = field(default_factory=dict)  # per slot: "acc", "window", "last"
    head_out: Tensor | None = None  # [B, Hkv, dv]: the mean attention output of the observation window (Task-KV)

    @property
    def n_valid(self) -> Tensor:
        """[B, Hkv, 1]: tokens held per head."""
        return self.valid.sum(-1, keepdim=True)

    @property
    def age(self) -> Tensor:
        """[B, Hkv, S]: 0 for a head's oldest token, 1 for the next, … (meaningless on invalid slots)."""
        return self.valid.long().cumsum(-1) - 1

    @property
    def recency(self) -> Tensor:
        """[B, Hkv, S]: 0 for a head's newest token, 1 for the one before, …"""
        return self.n_valid - 1 - self.age


def keep_top(score: Tensor, valid: Tensor, budget: Tensor, forced: Tensor | None = None) -> Tensor:
    """Keep, per head, the ``budget`` valid slots of largest ``score`` [B, Hkv, S] (ties: the older slot wins).

    ``budget`` [Hkv], [B, Hkv] or a number; ``forced`` [B, Hkv, S] marks slots kept before any other (sinks, a recent
    window: the caller clips them to the budget). Returns keep [B, Hkv, S] with min(budget, valid) per head.
    """
    s = score.to(torch.float64).masked_fill(~valid, float("-inf"))
    if forced is not None:
        s = s.masked_fill(forced & valid, float("inf"))
    order = torch.sort(s, dim=-1, descending=True, stable=True).indices
    rank = torch.empty_like(order)
    rank.scatter_(-1, order, torch.arange(s.shape[-1], device=s.device).expand_as(order))
    budget = torch.as_tensor(budget, device=s.device)
    budget = budget.reshape(1, -1, 1) if budget.dim() <= 1 else budget.reshape(*budget.shape[:2], 1)
    return (rank < budget) & valid


def window_of(state: HeadState, budget: Tensor, size: int) -> Tensor:
    """[B, Hkv, S]: the newest ``min(size, budget)`` tokens of each head."""
    limit = torch.clamp(torch.as_tensor(budget, device=state.valid.device), max=size).reshape(1, -1, 1)
    return state.valid & (state.recency < limit)


def sinks_of(state: HeadState, budget: Tensor, n_sink: int) -> Tensor:
    """[B, Hkv, S]: the oldest ``min(n_sink, budget)`` tokens of each head (StreamingLLM's attention sinks)."""
    limit = torch.clamp(torch.as_tensor(budget, device=state.valid.device), max=n_sink).reshape(1, -1, 1)
    return state.valid & (state.age < limit)


class KVPolicy(StrictModel):
    """A KV-cache policy: a budget, the statistics it needs, per-head budgets and a selection rule."""

    name: ClassVar[str] = ""
    needs: ClassVar[frozenset[str]] = frozenset()  # subset of STATS
    while_decoding: ClassVar[bool] = True  # hold the budget after every forward call
    positions: ClassVar[tuple[str, ...]] = ("cache", "original")  # the position schemes it supports

    budget: int | None = Field(None, gt=0)

    @property
    def label(self) -> str:
        """``full`` or ``name@budget``."""
        return "full" if self.budget is None else f"{self.name}@{self.budget}"

    def budgets(self, n_layers: int, n_kv_heads: int, length: int) -> Tensor:
        """[n_layers, n_kv_heads] tokens kept per head after ``length`` tokens (here: ``budget`` everywhere)."""
        keep = length if self.budget is None else min(self.budget, length)
        return torch.full((n_layers, n_kv_heads), keep, dtype=torch.long)

    def select(self, layer: int, state: HeadState, budget: Tensor) -> Tensor:
        """keep [B, Hkv, S]: the slots of layer ``layer`` that stay, at most ``budget`` [Hkv] per head."""
        raise NotImplementedError

    def full_step(self, call: int) -> bool:
        """Whether forward call number ``call`` (0 = the first) attends to every kept token."""
        return True

    def refresh(self, state: HeadState) -> Tensor | None:
        """After a full step: the slots [B, Hkv, S] later calls attend to (Recycled Attention), None for all."""
        return None
