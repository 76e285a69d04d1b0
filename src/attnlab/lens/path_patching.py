"""Path patching: the effect of sender heads on receiver heads (or on the logits) through one path only.

Wang et al. 2023, "Interpretability in the Wild: a Circuit for Indirect Object Identification in GPT-2 small"
(arXiv:2211.00593, §3.1 and appendix B); Goldowsky-Dill et al. 2023, "Localizing Model Behavior with Path
Patching" (arXiv:2304.05969). On the reference input (the clean prompt) the senders' outputs are replaced by
their outputs on the new input (the corrupted prompt) *only along the direct path* into the receivers:

1. every receiver head's query (or key, or value: ``via``) is recomputed from the residual stream
   ``resid_pre(reference) + Σ_senders (result_s(new) − result_s(reference))`` at its layer, every other
   component frozen at the reference run (the other inputs of the receiver layer — e.g. k and v when ``via="q"``
   — and everything that feeds the stream, MLPs included), so senders act on receivers and on nothing between;
2. the reference input is run again with only the receivers' ``hook_z`` replaced by what step 1 gave, and the
   rest of the model free; the metric of its logits is the path's effect.

With ``receivers=None`` the receiver is the logits: the reference's final residual plus the senders' change goes
through the final norm (recomputed) and the unembedding. An empty sender set changes nothing: the result is the
reference run's metric (the identity the tests check). A sender at or above a receiver's layer has no path to it.
``result_s`` is head s's share of its layer's output projection (``attnlab.lens.residual.head_results``).

Sender sets are batched: each is one copy of the reference along the batch axis, so a sweep over every head as
the sender takes two forward passes per ``batch_size`` heads, and both start at the first receiver's layer from
the reference stream (below it they would recompute the reference run); the first stops at the last receiver's
layer. To the logits it takes no forward pass.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor, nn

from attnlab.errors import ConfigError
from attnlab.hook_points import capture, hooks
from attnlab.lens.interventions import Head, check_heads
from attnlab.lens.patching import Metric
from attnlab.lens.residual import (
    final_resid_name,
    forward_from,
    head_results,
    n_layers,
    require,
    resid_pre_name,
    run_blocks,
    z_name,
)

PATHS = ("q", "k", "v")


def path_patching_names(model: nn.Module) -> list[str]:
    """Every hook point path patching reads from the reference and the new runs' caches."""
    names = [final_resid_name(model)]
    for layer in range(n_layers(model)):
        names += [z_name(layer), resid_pre_name(layer)] + [f"blocks.{layer}.attn.hook_{c}" for c in PATHS]
    return names


def _check_via(via: str) -> str:
    if not via or any(c not in PATHS for c in via) or len(set(via)) != len(via):
        raise ConfigError("via", via, "names the receivers' inputs the senders reach", ["q", "k", "v", "qk", "qkv"])
    return via


def _repeat(x: Tensor, n: int) -> Tensor:
    """[B, ...] → [n·B, ...], copy-major (row i·B + b is sample b of copy i)."""
    return x.repeat(n, *[1] * (x.dim() - 1))


def _sender_deltas(
    model: nn.Module, reference: Mapping[str, Tensor], new: Mapping[str, Tensor], layers: Sequence[int]
) -> dict[int, Tensor]:
    """{layer: result(new) − result(reference)} per head, [B, T, H, D] (head_results is linear in z)."""
    return {
        layer: head_results(
            model, layer, (require(new, z_name(layer)) - require(reference, z_name(layer))).transpose(1, 2)
        )
        for layer in layers
    }


def _stream_change(coefs: Mapping[int, Tensor], deltas: Mapping[int, Tensor], below: int) -> Tensor | int:
    """Σ over sender layers < ``below`` of the chosen senders' deltas, per copy: [n, B, T, D] (0 if none)."""
    total: Tensor | int = 0
    for layer, coef in coefs.items():
        if layer < below:
            total = total + torch.einsum("nh,bthd->nbtd", coef.to(deltas[layer].dtype), deltas[layer])
    return total


@torch.no_grad()
def path_patching(
    model: nn.Module,
    reference: Mapping[str, Tensor],
    new: Mapping[str, Tensor],
    sender_sets: Sequence[Sequence[Head]],
    receivers: Sequence[Head] | None,
    metric: Metric,
    via: str = "q",
) -> Tensor:
    """The metric after patching each sender set's path into ``receivers``, [len(sender_sets)], in one batch.

    ``reference`` and ``new`` are the caches of the reference and the new input (same shape) at
    ``path_patching_names(model)``; ``via``: which of the receivers' inputs (any of q, k, v) are
    recomputed from the patched stream; ``receivers=None``: the logits. See the module docstring.
    """
    final = require(reference, final_resid_name(model))  # [B, T, D]
    n, batch, total_layers = len(sender_sets), final.shape[0], n_layers(model)
    if n == 0:
        raise ConfigError("sender_sets", "[]", "needs at least one sender set (an empty set [] is allowed)")
    sets = [check_heads(model, senders, field="senders") for senders in sender_sets]
    layers = sorted({layer for senders in sets for layer, _ in senders})
    deltas = _sender_deltas(model, reference, new, layers)
    coefs = {layer: torch.zeros(n, deltas[layer].shape[2], device=final.device) for layer in layers}
    for i, senders in enumerate(sets):
        for layer, head in senders:
            coefs[layer][i, head] = 1.0
    if receivers is None:
        x = (final[None] + _stream_change(coefs, deltas, total_layers)).expand(n, *final.shape)  # [n, B, T, D]
        return metric(model.unembed(model.ln_f(x)))
    receivers = check_heads(model, receivers, field="receivers")
    fixed = [c for c in PATHS if c not in _check_via(via)]
    by_layer: dict[int, list[int]] = {}
    for layer, head in receivers:
        by_layer.setdefault(layer, []).append(head)

    def stream(layer: int) -> Callable[[Tensor], Tensor]:
        # the whole input of a receiver layer is replaced, so what earlier layers computed in this pass is unused
        change = _stream_change(coefs, deltas, layer)
        frozen = require(reference, resid_pre_name(layer))
        return lambda act: (frozen[None] + change).to(act.dtype).expand(n, *frozen.shape).reshape(act.shape)

    def frozen_input(name: str) -> Callable[[Tensor], Tensor]:
        return lambda act: _repeat(require(reference, name), n).to(act.dtype)

    step1 = {resid_pre_name(layer): stream(layer) for layer in by_layer}
    for layer in by_layer:
        step1.update({f"blocks.{layer}.attn.hook_{c}": frozen_input(f"blocks.{layer}.attn.hook_{c}") for c in fixed})
    # below the first receiver's layer both passes compute the reference run: start from its stream there
    first = min(by_layer)
    start = _repeat(require(reference, resid_pre_name(first)), n)
    with hooks(model, step1), capture(model, [z_name(layer) for layer in by_layer]) as patched_z:
        run_blocks(model, first, max(by_layer) + 1, start)  # up to the last receiver: no logits are needed

    def receiver_z(layer: int) -> Callable[[Tensor], Tensor]:
        heads = by_layer[layer]

        def fn(act: Tensor) -> Tensor:
            out = act.clone()
            out[:, heads] = patched_z[z_name(layer)][:, heads].to(act.dtype)
            return out

        return fn

    with hooks(model, {z_name(layer): receiver_z(layer) for layer in by_layer}):
        logits = forward_from(model, first, start)
    return metric(logits.view(n, batch, *logits.shape[1:]))


@torch.no_grad()
def path_patch_heads(
    model: nn.Module,
    reference: Mapping[str, Tensor],
    new: Mapping[str, Tensor],
    receivers: Sequence[Head] | None,
    metric: Metric,
    via: str = "q",
    batch_size: int = 16,
) -> Tensor:
    """Path patching with each head alone as the sender: [L, H], NaN for heads with no path to any receiver
    (at or above the last receiver's layer). ``batch_size`` sender heads share a forward pass."""
    if batch_size < 1:
        raise ConfigError("batch_size", batch_size, "must be at least 1")
    z = require(reference, z_name(0))
    total_layers, n_heads = n_layers(model), z.shape[1]
    below = total_layers if receivers is None else max(layer for layer, _ in check_heads(model, receivers, "receivers"))
    senders = [[(layer, head)] for layer in range(below) for head in range(n_heads)]
    out = torch.full((total_layers, n_heads), float("nan"), dtype=z.dtype)
    values = [
        path_patching(model, reference, new, senders[i : i + batch_size], receivers, metric, via)
        for i in range(0, len(senders), batch_size)
    ]
    if values:
        out[:below] = torch.cat(values).view(below, n_heads).to(out)
    return out
