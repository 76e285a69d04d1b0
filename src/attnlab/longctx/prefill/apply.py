"""Run a model's prefill with sparse attention, through hook points only (the attention core is not touched).

On every attention layer, hooks on ``blocks.{L}.attn.hook_rot_q``, ``hook_rot_k`` and ``hook_v`` keep the rotated
q, k and the values, and a hook on ``hook_z`` replaces the layer's attention output z with the block-sparse
attention over the layout the pattern builds from that q and k (``attnlab.attention.fast.block_sparse``). The
perplexity under a pattern is then exact: every later layer sees the sparse output.

``skip_dense`` (default): the hook on ``hook_rot_q`` hands the core only the first query row, so the core's own
dense attention costs one row instead of T (its output is replaced anyway); q for the sparse attention is the full
one the hook kept. Layers must be causal softmax self-attention without a window, a score_mod or a bias, with
heads that do not compute attention themselves (``check_layer``), and no KV cache.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnlab.attention import Attention
from attnlab.attention.fast.block_sparse import block_sparse_attention
from attnlab.errors import ConfigError
from attnlab.hook_points import hooks
from attnlab.longctx.prefill.layout import BlockLayout

Builder = Callable[[int, Tensor, Tensor, float], BlockLayout | None]  # (layer, q [H,T,D], k [Hkv,T,D], scale)


def attention_layers(model: nn.Module) -> dict[int, tuple[str, Attention]]:
    """{layer index: (module path, Attention)} of a model whose blocks are ``blocks.{L}.attn``."""
    found = {}
    for name, module in model.named_modules():
        parts = name.split(".")
        if isinstance(module, Attention) and len(parts) == 3 and parts[0] == "blocks" and parts[2] == "attn":
            found[int(parts[1])] = (name, module)
    if not found:
        raise ConfigError("model", type(model).__name__, "has no blocks.{L}.attn attention layers")
    return dict(sorted(found.items()))


def check_layer(name: str, attn: Attention) -> None:
    """Raise ConfigError unless the layer is plain causal softmax self-attention (what the kernel computes)."""
    problems = []
    if attn.cfg.normaliser_at(attn.site) != "softmax":
        problems.append(f"normaliser {attn.cfg.normaliser_at(attn.site)}")
    if attn.cfg.window is not None:
        problems.append(f"window {attn.cfg.window}")
    if not attn.site.causal or attn.site.cross:
        problems.append("not causal self-attention")
    if attn.position.score_mod() is not None or attn.position.score_bias() is not None:
        problems.append("a position score_mod / bias")
    if hasattr(attn.heads, "attend") or hasattr(attn.normaliser, "attend"):
        problems.append("heads or normaliser with their own attention")
    if problems:
        raise ConfigError(name, ", ".join(problems), "sparse prefill needs causal softmax attention", ["softmax"])


def layer_scale(attn: Attention, d_head: int) -> float:
    return attn.cfg.scale if attn.cfg.scale is not None else d_head**-0.5


@dataclass
class Record:
    """What the hooks saw: per layer, the layouts' densities (one per batch row) and, if asked, q, k, v."""

    density: dict[int, list[float]] = field(default_factory=dict)
    qkv: dict[int, tuple[Tensor, Tensor, Tensor]] = field(default_factory=dict)


def dense_causal(q: Tensor, k: Tensor, v: Tensor, scale: float) -> Tensor:
    """Causal SDPA of one sequence, q [H, T, D], k, v [Hkv, T, D] (GQA)."""
    gqa = q.shape[0] != k.shape[0]
    return F.scaled_dot_product_attention(q[None], k[None], v[None], is_causal=True, scale=scale, enable_gqa=gqa)[0]


@contextmanager
def sparse_prefill(
    model: nn.Module, build: Builder, *, skip_dense: bool = True, keep_qkv: bool = False
) -> Iterator[Record]:
    """Within the block, every forward pass of ``model`` computes attention under ``build``'s layouts."""
    layers = attention_layers(model)
    for _, (name, attn) in layers.items():
        check_layer(name, attn)
    record = Record()
    state: dict[int, dict[str, Tensor]] = {layer: {} for layer in layers}
    fns: dict[str, Callable[[Tensor], Tensor | None]] = {}
    for layer, (name, attn) in layers.items():
        keep = state[layer]

        def take(key: str, keep: dict[str, Tensor] = keep) -> Callable[[Tensor], None]:
            def fn(x: Tensor) -> None:
                keep[key] = x

            return fn

        def rot_q(x: Tensor, keep: dict[str, Tensor] = keep) -> Tensor | None:
            keep["q"] = x
            return x[:, :, :1] if skip_dense and x.shape[2] > 1 else None

        def z(out: Tensor, layer: int = layer, attn: Attention = attn, keep: dict[str, Tensor] = keep) -> Tensor:
            q, k, v = keep.pop("q"), keep.pop("k"), keep.pop("v")
            if k.shape[2] != q.shape[2]:
                raise ConfigError("cache", "KV cache", "sparse prefill runs one full prefill pass, no cache")
            scale = layer_scale(attn, q.shape[-1])
            rows, densities = [], []
            for b in range(q.shape[0]):
                layout = build(layer, q[b], k[b], scale)
                if layout is None:
                    rows.append(dense_causal(q[b], k[b], v[b], scale))
                    densities.append(1.0)
                else:
                    rows.append(block_sparse_attention(q[b], k[b], v[b], layout, scale=scale))
                    densities.append(layout.density())
            record.density.setdefault(layer, []).extend(densities)
            if keep_qkv:
                record.qkv[layer] = (q.detach(), k.detach(), v.detach())
            return torch.stack(rows).to(out.dtype)

        fns[f"{name}.hook_rot_q"] = rot_q
        fns[f"{name}.hook_rot_k"] = take("k")
        fns[f"{name}.hook_v"] = take("v")
        fns[f"{name}.hook_z"] = z
    with torch.no_grad(), hooks(model, fns):
        yield record
