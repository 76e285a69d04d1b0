"""Activation patching: rerun one input with another run's activation written in at chosen hook points.

Causal tracing / activation patching (Meng et al. 2022, "Locating and Editing Factual Associations in GPT",
arXiv:2202.05262; Wang et al. 2023, "Interpretability in the Wild", arXiv:2211.00593; Zhang & Nanda 2024, "Towards
Best Practices of Activation Patching", arXiv:2309.16042). The usual "denoising" form runs the corrupted prompt
and patches in the clean activation of one component; the metric (e.g. the logit difference) then says how much
of the clean behaviour that component alone restores. Swapping the two inputs gives "noising".

A patch is a set of ``Site`` s: a hook point and, optionally, one head (axis 1 of a ``[B, H, T, ...]``
activation: ``hook_z``, ``hook_q``, ``hook_pattern`` ...) and one position (the time axis: axis 2 of those, axis 1
of a ``[B, T, D]`` stream activation such as ``hook_resid_pre``; the query row of a pattern). Many patches run in
one forward pass: the input is repeated once per patch along the batch axis and each copy gets its own mask, as
in TransformerLens's ``patching`` module but batched over patches (copy-major: row ``i·B + b`` is prompt b under
patch i).

A metric maps logits ``[N, B, T, V]`` (N patched copies of the B prompts) to ``[N]``; ``logit_diff_metric``
builds the usual one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from attnlab.errors import ConfigError
from attnlab.hook_points import hooks
from attnlab.lens.residual import at_position, block_of, forward_from, n_layers, require, resid_pre_name

Metric = Callable[[Tensor], Tensor]  # logits [N, B, T, V] → [N] (or [N, ...]: one value or tensor per copy)

# hook kinds: a [B, H, T, ...] activation inside the attention, or a [B, T, D] residual-stream one
HEAD_HOOKS = {
    "z": "attn.hook_z",
    "q": "attn.hook_q",
    "k": "attn.hook_k",
    "v": "attn.hook_v",
    "pattern": "attn.hook_pattern",
}
STREAM_HOOKS = {
    "resid_pre": "hook_resid_pre",
    "resid_mid": "hook_resid_mid",
    "resid_post": "hook_resid_post",
    "attn_out": "hook_attn_out",
    "mlp_out": "hook_mlp_out",
}
PER = {"head": "[L, H]", "position": "[L, T]", "head_position": "[L, H, T]", "layer": "[L]"}


@dataclass(frozen=True)
class Site:
    """One place to patch: a hook point, optionally narrowed to one head and / or one position."""

    name: str
    head: int | None = None
    position: int | None = None


def logit_diff(logits: Tensor, correct: Tensor, wrong: Tensor, position: int | Tensor = -1) -> Tensor:
    """``logit[correct] − logit[wrong]`` at ``position`` (an int or one per prompt, [B]): logits [..., B, T, V],
    token ids [B] → [..., B]."""
    lead = logits.shape[:-3]
    flat = logits.reshape(-1, *logits.shape[-3:]).movedim(0, 1)  # [B, N, T, V]
    at = at_position(flat, position, 2)  # [B, N, V]
    idx = torch.stack([correct, wrong], -1).to(at.device)[:, None, :].expand(-1, at.shape[1], -1)  # [B, N, 2]
    picked = at.gather(-1, idx)
    return (picked[..., 0] - picked[..., 1]).movedim(0, 1).reshape(*lead, -1)


def logit_diff_metric(correct: Tensor, wrong: Tensor, position: int | Tensor = -1) -> Metric:
    """The metric ``mean over prompts of logit_diff``: logits [N, B, T, V] → [N]."""
    return lambda logits: logit_diff(logits, correct, wrong, position).mean(-1)


def normalised(values: Tensor, clean: Tensor | float, corrupted: Tensor | float) -> Tensor:
    """``(values − corrupted) / (clean − corrupted)``: 0 = the corrupted run's metric, 1 = the clean run's
    (the IOI paper's and TransformerLens's normalised patching score)."""
    return (values - corrupted) / (clean - corrupted)


def _mask(site: Site, shape: tuple[int, ...]) -> tuple:
    """The index into one activation (without its batch axis) that a site selects."""
    everywhere = slice(None)
    position = everywhere if site.position is None else site.position
    if len(shape) == 3:  # [H, T, ...]: head axis, then time
        return (everywhere if site.head is None else site.head, position)
    if site.head is not None:
        raise ConfigError("Site.head", site.head, f"{site.name} has no head axis (its shape is [B, *{list(shape)}])")
    return (position,)


@torch.no_grad()
def run_with_patches(
    model: nn.Module,
    tokens: Tensor,
    source: Mapping[str, Tensor],
    patch_sets: Sequence[Sequence[Site]],
    metric: Metric,
    base: Mapping[str, Tensor] | None = None,
) -> Tensor:
    """One forward pass of ``len(patch_sets)`` copies of ``tokens`` [B, T], copy i with ``source``'s activations
    written in at every site of ``patch_sets[i]``; returns ``metric`` of the logits, [len(patch_sets)].

    ``source`` holds the activations of the run patched from (e.g. ``run_with_cache(model, clean_tokens, names)``
    with the same B); a site's activation must be there. ``base``, the cache of the unpatched run on ``tokens``
    with its ``blocks.{l}.hook_resid_pre``, lets the pass start at the lowest patched layer instead of the
    embedding (the layers below compute what they computed there).
    """
    n, batch = len(patch_sets), tokens.shape[0]
    masks: dict[str, Tensor] = {}
    for i, sites in enumerate(patch_sets):
        for site in sites:
            act = require(source, site.name)
            if act.shape[0] != batch:
                raise ConfigError(site.name, tuple(act.shape), f"the source activation needs batch {batch} like tokens")
            if site.name not in masks:
                masks[site.name] = torch.zeros(n, *act.shape[1:], dtype=torch.bool, device=act.device)
            masks[site.name][(i, *_mask(site, tuple(act.shape[1:])))] = True

    def patch(name: str) -> Callable[[Tensor], Tensor]:
        src, mask = source[name], masks[name]

        def fn(act: Tensor) -> Tensor:
            copies = act.view(n, batch, *act.shape[1:])  # [N·B, ...] → [N, B, ...]
            return torch.where(mask[:, None], src[None].to(act.dtype), copies).view_as(act)

        return fn

    layers = [block_of(name) for name in masks]
    start = None if base is None or not layers or None in layers else min(layers)
    with hooks(model, {name: patch(name) for name in masks}):
        if start is None:
            logits = model(tokens.repeat(n, 1))  # [N·B, T, V], copy-major
        else:
            resid = require(base, resid_pre_name(start))
            logits = forward_from(model, start, resid.repeat(n, *[1] * (resid.dim() - 1)))
    return metric(logits.view(n, batch, *logits.shape[1:]))


def patching_names(model: nn.Module, hook: str) -> list[str]:
    """The hook point of ``hook`` (a key of ``HEAD_HOOKS`` or ``STREAM_HOOKS``) in every layer."""
    suffix = {**HEAD_HOOKS, **STREAM_HOOKS}.get(hook)
    if suffix is None:
        raise ConfigError("hook", hook, "not a patchable hook kind", [*HEAD_HOOKS, *STREAM_HOOKS])
    return [f"blocks.{layer}.{suffix}" for layer in range(n_layers(model))]


def patch_grid(
    model: nn.Module, source: Mapping[str, Tensor], hook: str, per: str, positions: Sequence[int] | None = None
) -> tuple[list[list[Site]], tuple]:
    """Every single-site patch of ``hook`` by ``per`` (a key of ``PER``), and the shape of the result grid.

    ``positions`` (per position only): the time steps patched, in that order (None: all of them).
    """
    if per not in PER:
        raise ConfigError("per", per, "not a patching granularity", list(PER))
    names = patching_names(model, hook)
    shape = tuple(require(source, names[0]).shape)
    if hook in STREAM_HOOKS and per in ("head", "head_position"):
        raise ConfigError("per", per, f"{hook} is a [B, T, D] activation with no head axis", ["position", "layer"])
    n_heads, n_pos = (shape[1], shape[2]) if hook in HEAD_HOOKS else (0, shape[1])
    steps = list(range(n_pos)) if positions is None else [int(t) for t in positions]
    if positions is not None and (per not in ("position", "head_position") or not steps):
        raise ConfigError("positions", positions, "selects time steps for per='position' or 'head_position'")
    bad = [t for t in steps if not -n_pos <= t < n_pos]
    if bad:
        raise ConfigError("positions", bad, f"outside the {n_pos} positions", f"-{n_pos}..{n_pos - 1}")
    grid: list[list[Site]] = []
    for name in names:
        if per == "layer":
            grid.append([Site(name)])
        elif per == "head":
            grid += [[Site(name, head=h)] for h in range(n_heads)]
        elif per == "position":
            grid += [[Site(name, position=t)] for t in steps]
        else:
            grid += [[Site(name, head=h, position=t)] for h in range(n_heads) for t in steps]
    dims = {"layer": (), "head": (n_heads,), "position": (len(steps),), "head_position": (n_heads, len(steps))}[per]
    return grid, (len(names), *dims)


@torch.no_grad()
def activation_patching(
    model: nn.Module,
    tokens: Tensor,
    source: Mapping[str, Tensor],
    metric: Metric,
    hook: str = "z",
    per: str = "head",
    batch_size: int = 16,
    base: Mapping[str, Tensor] | None = None,
    positions: Sequence[int] | None = None,
) -> Tensor:
    """The metric with each component of ``hook`` patched alone from ``source`` into the run on ``tokens``.

    ``per="head"`` → [L, H] (every position of that head), ``"position"`` → [L, T] (all heads / the whole stream
    vector at that position), ``"head_position"`` → [L, H, T], ``"layer"`` → [L] (the whole activation). ``hook``:
    ``z q k v pattern`` (per head; k and v have the key/value heads of GQA) or ``resid_pre resid_mid resid_post
    attn_out mlp_out``. ``batch_size`` patches share a forward pass (memory grows with it: the logits are
    [batch_size · B, T, V]). ``base``: the cache of the unpatched run on ``tokens`` (its ``hook_resid_pre`` s), so
    that each pass starts at its lowest patched layer (about half the work for a per-head sweep). ``positions``:
    patch only these time steps (per position; the last axis then follows their order), e.g. those from the
    first token where the prompts differ on, since earlier positions carry the same activations in both runs.
    """
    if batch_size < 1:
        raise ConfigError("batch_size", batch_size, "must be at least 1")
    grid, shape = patch_grid(model, source, hook, per, positions)
    values = [
        run_with_patches(model, tokens, source, grid[i : i + batch_size], metric, base)
        for i in range(0, len(grid), batch_size)
    ]
    return torch.cat(values).view(shape)
