"""Head interventions through the ``blocks.{L}.attn.hook_z`` hook points: zero- and mean-ablation and scaling.

Every attnlab model names a layer's head outputs ``blocks.{L}.attn.hook_z``: ``z [B, H, T, d_head]`` (heads before
time), recorded after the attention and before the heads' combination (``o_proj``; gated heads multiply by their
gate first). So the same code works on ``TransformerLM``, SmolLM2's ``LlamaLM`` and MiniLM's ``BertEncoder``. One
edit per layer is an affine map per head::

    z'[:, h] = m_h ⊙ z[:, h] + a_h         (m_h: a scale or a vector [d_head], a_h [d_head]: offset)

    zero-ablation   m_h = 0, a_h = 0
    mean-ablation   m_h = 0, a_h = mean of z[:, h] over a reference batch and its positions
    scaling         m_h = c, a_h = 0        (c may be a tensor with a gradient: PEAR learns it)
    vector scaling  m_h = 1 + A_h [d_head]  (LoFiT's head-selection step learns A_h)
    offset          m_h = 1, a_h = v_h      (LoFiT's bias vectors; a head may be scaled and offset at once)

Scales and offsets may carry gradients: the per-layer scale and offset tensors are stacked, never written in place,
so a learned parameter (``lens.head_offsets.HeadOffsets``, PEAR's coefficients) receives its gradient through them.

Hooking ``hook_z`` does not force the reference attention (only score / pattern hooks do), so the fused SDPA path
stays in use. Zero-ablating every head of a layer whose output projection has no bias removes the layer's attention
output exactly; with a bias (BERT) the bias remains. The effect of ablating or rescaling a head on a loss is the
standard causal-intervention measure of mechanistic interpretability (e.g. Olsson et al. 2022, "In-context
Learning and Induction Heads", ablation of induction heads; Wang et al. 2023, IOI, mean-ablation).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from attnlab.errors import ConfigError
from attnlab.hook_points import capture, hook_points, hooks

Head = tuple[int, int]  # (layer, head)

_Z = re.compile(r"^blocks\.(\d+)\.attn\.hook_z$")
_HEAD = re.compile(r"^\s*L(\d+)\s*H(\d+)\s*$", re.IGNORECASE)


def z_hook_name(layer: int) -> str:
    """The hook point holding layer ``layer``'s head outputs: ``blocks.{layer}.attn.hook_z``."""
    return f"blocks.{layer}.attn.hook_z"


def head_label(head: Head) -> str:
    """``(18, 6)`` → ``"L18H6"``, the notation used in tables and on the command line."""
    return f"L{head[0]}H{head[1]}"


def parse_heads(spec: str, field: str = "heads") -> list[Head]:
    """``"L18H6,L17H3"`` (commas or spaces) → ``[(18, 6), (17, 3)]``, in the order given, duplicates rejected.

    Raises ``ConfigError`` naming the first bad item.
    """
    items = [s for s in re.split(r"[,\s]+", spec.strip()) if s]
    if not items:
        raise ConfigError(field, spec, "no heads given", "a list like L18H6,L17H3")
    out: list[Head] = []
    for item in items:
        m = _HEAD.match(item)
        if m is None:
            raise ConfigError(field, item, "not a head", "L<layer>H<head>, e.g. L18H6")
        head = (int(m.group(1)), int(m.group(2)))
        if head in out:
            raise ConfigError(field, item, "listed twice")
        out.append(head)
    return out


def model_heads(model: nn.Module) -> dict[int, int]:
    """{layer: number of heads} for every layer with a ``blocks.{L}.attn.hook_z`` hook point.

    The head count is the attention module's ``site.n_heads`` (its query heads; GQA shares key/value heads but
    ``hook_z`` has one slice per query head).
    """
    layers = sorted(int(m.group(1)) for name in hook_points(model) if (m := _Z.match(name)))
    if not layers:
        raise ConfigError("model", type(model).__name__, "has no blocks.{L}.attn.hook_z hook points")
    out = {}
    for layer in layers:
        attn = model.get_submodule(f"blocks.{layer}.attn")
        site = getattr(attn, "site", None)
        if site is None:
            raise ConfigError("model", type(model).__name__, f"blocks.{layer}.attn is not an attnlab Attention")
        out[layer] = int(site.n_heads)
    return out


def all_heads(model: nn.Module, layers: Iterable[int] | None = None) -> list[Head]:
    """Every (layer, head) of the model, or of the given layers, in layer/head order."""
    counts = model_heads(model)
    chosen = sorted(counts) if layers is None else list(layers)
    check_layers(model, chosen)
    return [(layer, h) for layer in chosen for h in range(counts[layer])]


def check_layers(model: nn.Module, layers: Iterable[int], field: str = "layers") -> None:
    """ConfigError unless every layer exists."""
    counts = model_heads(model)
    for layer in layers:
        if layer not in counts:
            raise ConfigError(field, layer, "no such layer", f"0..{max(counts)}")


def check_heads(model: nn.Module, heads: Iterable[Head], field: str = "heads") -> list[Head]:
    """The heads as a list, after checking each (layer, head) exists in ``model``; ConfigError otherwise."""
    counts = model_heads(model)
    out = []
    for head in heads:
        layer, h = int(head[0]), int(head[1])
        if layer not in counts:
            raise ConfigError(field, head_label((layer, h)), "no such layer", f"layers 0..{max(counts)}")
        if not 0 <= h < counts[layer]:
            raise ConfigError(field, head_label((layer, h)), "no such head", f"heads 0..{counts[layer] - 1}")
        out.append((layer, h))
    return out


def _layer_fn(head_idx: list[int], mult: list[Tensor | float], add: list[Tensor | None]) -> Callable[[Tensor], Tensor]:
    """One hook_z function applying ``z'[:, h] = m_h ⊙ z[:, h] + a_h`` to the listed heads (others untouched)."""
    top = max(head_idx)

    def edit(z: Tensor) -> Tensor:
        if z.dim() != 4 or z.shape[1] <= top:
            raise ConfigError(
                "heads", f"head {top}", f"hook_z has shape {tuple(z.shape)}; expected [B, H, T, d] with H > {top}"
            )
        n_heads, d = z.shape[1], z.shape[-1]
        one = torch.ones(d, dtype=z.dtype, device=z.device)
        zero = torch.zeros(d, dtype=z.dtype, device=z.device)
        scales = {h: _as_scale(m, z) for h, m in zip(head_idx, mult, strict=True)}
        offsets = {h: _as_vector(a, z, "offset") for h, a in zip(head_idx, add, strict=True) if a is not None}
        # stacked, never written in place, so a scale or offset that carries a gradient back-propagates
        scale = torch.stack([scales.get(h, one) for h in range(n_heads)])  # [H, d]
        offset = torch.stack([offsets.get(h, zero) for h in range(n_heads)])  # [H, d]
        return z * scale[None, :, None, :] + offset[None, :, None, :]

    return edit


def _as_scale(value: Tensor | float, like: Tensor) -> Tensor:
    """A coefficient (float or 0-d tensor) or a vector [d] as a [d] tensor in ``like``'s dtype and device."""
    if isinstance(value, Tensor) and value.dim() > 0:
        return _as_vector(value, like, "scale")
    if isinstance(value, Tensor):
        return value.to(dtype=like.dtype, device=like.device).reshape(()).expand(like.shape[-1])
    return torch.full((like.shape[-1],), float(value), dtype=like.dtype, device=like.device)


def _as_vector(value: Tensor, like: Tensor, field: str) -> Tensor:
    """``value`` [d_head] in ``like``'s dtype and device; ConfigError when its length is not hook_z's last dim."""
    if value.shape != like.shape[-1:]:
        raise ConfigError(field, f"a tensor of shape {tuple(value.shape)}", f"needs [{like.shape[-1]}] (d_head)")
    return value.to(dtype=like.dtype, device=like.device)


def head_edit_hooks(
    model: nn.Module,
    *,
    zero: Iterable[Head] = (),
    mean: Mapping[Head, Tensor] | None = None,
    scale: Mapping[Head, Tensor | float] | None = None,
    offset: Mapping[Head, Tensor] | None = None,
) -> dict[str, Callable[[Tensor], Tensor]]:
    """The ``{hook name: fn}`` dict that applies the edits (for ``attnlab.hook_points.hooks``).

    ``zero``: heads set to 0; ``mean``: head → replacement vector [d_head]; ``scale``: head → coefficient (a float,
    a 0-d tensor or a vector [d_head], any of which may require grad); ``offset``: head → vector [d_head] added to
    the head's output (may require grad). A head zeroed or mean-ablated may appear nowhere else; a head may be both
    scaled and offset, ``z' = m ⊙ z + a`` (ConfigError otherwise).
    """
    mean, scale, offset = dict(mean or {}), dict(scale or {}), dict(offset or {})
    edits: dict[Head, tuple[Tensor | float, Tensor | None]] = {}
    for kind, heads in (("zero", list(zero)), ("mean", list(mean)), ("scale", list(scale))):
        for head in check_heads(model, heads, field=kind):
            if head in edits:
                raise ConfigError(kind, head_label(head), "is edited twice (zero / mean / scale overlap)")
            if kind == "zero":
                edits[head] = (0.0, None)
            elif kind == "mean":
                vec = mean[head]
                if not isinstance(vec, Tensor) or vec.dim() != 1:
                    raise ConfigError("mean", head_label(head), "needs a 1-d tensor [d_head] (see head_means)")
                edits[head] = (0.0, vec.detach())
            else:
                edits[head] = (scale[head], None)
    for head in check_heads(model, list(offset), field="offset"):
        vec = offset[head]
        if not isinstance(vec, Tensor) or vec.dim() != 1:
            raise ConfigError("offset", head_label(head), "needs a 1-d tensor [d_head]")
        if head in edits and head not in scale:
            raise ConfigError("offset", head_label(head), "is also zeroed or mean-ablated")
        edits[head] = (scale.get(head, 1.0), vec)
    by_layer: dict[int, list[Head]] = {}
    for head in edits:
        by_layer.setdefault(head[0], []).append(head)
    fns = {}
    for layer, heads in sorted(by_layer.items()):
        idx = [h for _, h in heads]
        fns[z_hook_name(layer)] = _layer_fn(idx, [edits[x][0] for x in heads], [edits[x][1] for x in heads])
    return fns


@contextmanager
def edit_heads(
    model: nn.Module,
    *,
    zero: Iterable[Head] = (),
    mean: Mapping[Head, Tensor] | None = None,
    scale: Mapping[Head, Tensor | float] | None = None,
    offset: Mapping[Head, Tensor] | None = None,
) -> Iterator[None]:
    """Run ``model`` with heads zero-ablated, mean-ablated, scaled and / or offset inside the ``with`` block."""
    with hooks(model, head_edit_hooks(model, zero=zero, mean=mean, scale=scale, offset=offset)):
        yield


@contextmanager
def zero_ablate(model: nn.Module, heads: Iterable[Head]) -> Iterator[None]:
    """Zero-ablation: each listed head's output ``z[:, h]`` is replaced by 0 (before ``o_proj``)."""
    with edit_heads(model, zero=heads):
        yield


@contextmanager
def mean_ablate(model: nn.Module, means: Mapping[Head, Tensor]) -> Iterator[None]:
    """Mean-ablation: each head's output is replaced by its recorded mean (``head_means``) at every position."""
    with edit_heads(model, mean=means):
        yield


@contextmanager
def scale_heads(model: nn.Module, scales: Mapping[Head, Tensor | float]) -> Iterator[None]:
    """Scaling: each head's output is multiplied by its coefficient, ``z'[:, h] = c_h · z[:, h]``."""
    with edit_heads(model, scale=scales):
        yield


@contextmanager
def offset_heads(model: nn.Module, offsets: Mapping[Head, Tensor]) -> Iterator[None]:
    """Offsets: each head's output gets its vector added at every position, ``z'[:, h] = z[:, h] + v_h``."""
    with edit_heads(model, offset=offsets):
        yield


def head_dim(model: nn.Module, layer: int) -> int:
    """The length of one head's output in ``blocks.{layer}.attn.hook_z`` (the attention site's ``d_head``)."""
    check_layers(model, [layer])
    return int(model.get_submodule(f"blocks.{layer}.attn").site.d_head)


@torch.no_grad()
def head_means(
    model: nn.Module, tokens: Tensor, heads: Sequence[Head], positions: slice | Sequence[int] | None = None
) -> dict[Head, Tensor]:
    """Mean output of each head over a reference batch: ``mean_{b, t} z[b, h, t, :]`` → {head: [d_head]}.

    ``tokens`` [B, T] is the reference batch; ``positions`` (a slice or indices into T; None = all) restricts the
    positions averaged, e.g. ``slice(1, None)`` to leave out a BOS token whose output is atypical.
    """
    heads = check_heads(model, heads)
    layers = sorted({layer for layer, _ in heads})
    with capture(model, [z_hook_name(layer) for layer in layers]) as cache:
        model(tokens)
    out = {}
    for layer, h in heads:
        z = cache[z_hook_name(layer)][:, h]  # [B, T, d]
        if positions is not None:
            z = z[:, positions] if isinstance(positions, slice) else z[:, list(positions)]
        if z.shape[1] == 0:
            raise ConfigError("positions", str(positions), "selects no position of the reference batch")
        out[(layer, h)] = z.float().mean((0, 1)).to(z.dtype)
    return out


def random_heads(
    model: nn.Module, k: int, seed: int, exclude: Iterable[Head] = (), layers: Iterable[int] | None = None
) -> list[Head]:
    """``k`` distinct heads drawn uniformly (seeded) from the model (or ``layers``), none of them in ``exclude``."""
    excluded = set(exclude)
    pool = [x for x in all_heads(model, layers) if x not in excluded]
    if not 0 <= k <= len(pool):
        raise ConfigError("k", k, f"must be between 0 and the {len(pool)} heads available")
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(pool), generator=g)[:k].tolist()
    return sorted(pool[i] for i in idx)
