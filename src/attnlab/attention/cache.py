"""The KV cache of incremental decoding: what a self-attention layer keeps between calls."""

from __future__ import annotations

import torch
from torch import Tensor


class LayerKVCache:
    """What one self-attention layer keeps for incremental decoding.

    By default the keys (after rotation) and values, [B, Hkv, S, d] each. A heads module that caches
    something else (MLA / CLLA: the compressed latent) defines ``extend_cache(cache, k, v)``, stores its own
    tensors with ``append_to`` and returns the full keys and values; ``length`` counts tokens either way.
    Decoding with position ids also keeps every key's position (``positions``), which a score_mod (ALiBi, T5)
    reads; a caller's mask then covers every cached key too ([.., Tq, S + Tq]).
    """

    def __init__(self) -> None:
        self.store: dict[str, Tensor] = {}
        self.length = 0
        # the keys' positions [B|1, S] once a step gave position ids (``extend_positions``); None: 0 … S − 1
        self.positions: Tensor | None = None

    @property
    def k(self) -> Tensor | None:
        return self.store.get("k")

    @property
    def v(self) -> Tensor | None:
        return self.store.get("v")

    def append_to(self, name: str, t: Tensor, dim: int = 2) -> Tensor:
        """Concatenate ``t`` to the stored tensor ``name`` along ``dim`` (time); returns the whole of it."""
        self.store[name] = t if name not in self.store else torch.cat([self.store[name], t], dim=dim)
        return self.store[name]

    def append(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        k_all, v_all = self.append_to("k", k), self.append_to("v", v)
        self.length += k.shape[2]
        return k_all, v_all

    def extend_positions(self, positions: Tensor | None, t: int, device: torch.device) -> Tensor | None:
        """Record the positions of ``t`` new keys (None: the next ``t`` indices) before they are appended; returns
        every key's position [B|1, S + t], or None while all of them are their indices 0 … S + t − 1."""
        if positions is None and self.positions is None:
            return None
        start = self.length
        old = self.positions if self.positions is not None else torch.arange(start, device=device)[None]
        new = positions if positions is not None else torch.arange(start, start + t, device=device)
        new = new if new.dim() == 2 else new[None]
        rows = max(old.shape[0], new.shape[0])
        self.positions = torch.cat([old.expand(rows, -1), new.expand(rows, -1)], dim=1)
        return self.positions

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.store.values())


class KVCache:
    """One ``LayerKVCache`` per layer, for incremental decoding."""

    def __init__(self, n_layers: int) -> None:
        self.layers = [LayerKVCache() for _ in range(n_layers)]

    def __getitem__(self, i: int) -> LayerKVCache:
        return self.layers[i]

    @property
    def length(self) -> int:
        return self.layers[0].length if self.layers else 0

    def nbytes(self) -> int:
        return sum(layer.nbytes() for layer in self.layers)
