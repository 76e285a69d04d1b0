"""``build_attention``: an ``AttentionConfig`` and a site → an attention module.

The module composes the four axes: heads project q, k, v; the position encoding rotates q, k or
modifies scores; the normaliser turns scores into weights; a path computes it. Which path is decided in one
place, ``attnlab.attention.dispatch``: ``Attention.forward`` describes its call once (``describe``), asks
``dispatch.choose`` and runs the path it names (``run_path``); each path only computes. Fused paths never return
weights, so whenever a hook reads ``hook_attn_scores`` or ``hook_pattern`` the table sends the layer to a path
that does (as transformers falls back to eager attention for ``output_attentions``).

Extension points, each optional, found by duck typing so the module never names a mechanism:

- ``heads.rotate(position, q, k, positions)``: a heads module that rotates only part of q, k (MLA's
  decoupled RoPE key) does it itself;
- ``heads.project(x, context) -> Projection``: q, k, v and, in ``Projection.latent``, whatever the heads'
  ``extend_cache(cache, k, v, latent) -> (k_all, v_all)`` needs (MLA / CLLA keep the latent in the
  ``LayerKVCache`` and rebuild the full keys and values);
- ``heads.attend(q, k, v, *, normaliser, score_mod, causal, scale, window) -> AttnOutput``: heads that
  change the attention computation itself (differential pairs, talking heads, sink tokens);
  ``heads.attend_sdpa(q, k, v, *, normaliser, bias, causal, scale, window)``: their fused form (path
  ``heads_sdpa``); a heads module's own hook points (MoH's gate, MLA's latent, the sink mass) are hoisted to the
  layer's names;
- ``normaliser.attend(...)``: same signature, for mechanisms whose weights are not a function of q·k
  scores (kernel / linear attention: the quadratic reference);
- ``normaliser.attend_<backend>(...)``: a fast path declared in the normaliser's capability ``backends``
  (``chunked``, ``recurrent``, ``fft``, ``flex``, ``sdpa``), returning an AttnOutput whose scores and weights may
  be None; score normalisers computed in tiles derive from ``TiledNormaliser``;
- ``position.score_bias()``: the score_mod's bias as a typed value (``attnlab.types``) for the paths that apply
  it themselves; ``position.attend(q, k, v, *, x, start, normaliser, causal, scale, window)``: a position
  encoding that owns the computation and reads the layer input ``x`` (2D-TPE's per-head router over traversal
  orders); q, k arrive unrotated and ``start`` is the absolute position of the first query.
- ``cache.extend_rotated(position, q, k, v) -> (q, k_all, v_all)``: a KV cache that keeps keys *before*
  rotation and chooses every key's position itself (StreamingLLM's positions within an evicted cache)
  appends the new k, v and returns the rotated queries and all rotated keys; the default ``LayerKVCache`` has
  no such method and caches keys after rotation.
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnlab.attention import dispatch
from attnlab.attention.cache import KVCache, LayerKVCache
from attnlab.attention.config import AttentionConfig, AttentionSite
from attnlab.attention.core import AttnOutput, ScoreMod, attend_reference, build_mask, repeat_kv
from attnlab.attention.fast import native
from attnlab.attention.fast import triton as fast_triton
from attnlab.attention.heads import HEADS
from attnlab.attention.masks import (
    as_attention_mask,
    guard_empty,
    layer_mask,
    positional_score_mod,
    resolve_positions,
    zero_empty,
)
from attnlab.attention.normalisers import NORMALISERS
from attnlab.attention.normalisers.tiled import TiledNormaliser
from attnlab.hook_points import HookPoint
from attnlab.position import POSITIONS
from attnlab.position.base import NoPE, PositionEncoding
from attnlab.types import AlibiBias, AttentionMask, MaskKind, PositionBias, RelativeBias

__all__ = ["Attention", "KVCache", "LayerKVCache", "build_attention", "build_input_position", "sdpa"]


def build_position(cfg: AttentionConfig, site: AttentionSite) -> PositionEncoding:
    entry = POSITIONS.entry(cfg.position)
    return entry.factory(entry.params.model_validate(cfg.position_args), site)


def build_input_position(cfg: AttentionConfig, site: AttentionSite) -> PositionEncoding | None:
    """The model-level position module for absolute encodings (learned, sinusoidal), else None."""
    return build_position(cfg, site) if POSITIONS.get(cfg.position).absolute else None


class Attention(nn.Module):
    """Self- or cross-attention assembled from the registries. Input and output [B, T, D]."""

    def __init__(self, cfg: AttentionConfig, site: AttentionSite):
        super().__init__()
        cfg.check_site(site)
        self.cfg, self.site = cfg, site
        heads = HEADS.entry(cfg.heads)
        self.heads = heads.factory(heads.params.model_validate(cfg.heads_args), site)
        norm_name = cfg.normaliser_at(site)
        norm = NORMALISERS.entry(norm_name)
        norm_args = cfg.normaliser_args if norm_name == cfg.normaliser else {}
        self.normaliser_name = norm_name
        self.normaliser = norm.factory(norm.params.model_validate(norm_args), site)
        # an instance may opt out of its entry's sdpa backend (softmax with soft-capping, which SDPA cannot apply)
        self.sdpa_ok = "sdpa" in norm.capabilities.backends and getattr(self.normaliser, "sdpa_ok", True)
        pos_cls = POSITIONS.get(cfg.position)
        self.position = NoPE() if (site.cross or pos_cls.absolute) else build_position(cfg, site)
        self.q_norm, self.k_norm = qk_norms(cfg, site, self.heads)
        for name in ("q", "k", "v", "rot_q", "rot_k", "attn_scores", "pattern", "z"):
            setattr(self, f"hook_{name}", HookPoint())
        self._hoist_hook_points(self.heads)

    def _hoist_hook_points(self, child: nn.Module) -> None:
        """Give a child's own hook points (MoH's ``hook_head_gate``, MLA's ``hook_latent_kv``) the layer's names:
        ``blocks.{L}.attn.hook_head_gate`` rather than ``blocks.{L}.attn.heads.hook_head_gate``."""
        for name, point in list(child.named_children()):
            if isinstance(point, HookPoint):
                delattr(child, name)
                object.__setattr__(child, name, point)  # the child still calls it; the layer owns it
                setattr(self, name, point)

    def wants_weights(self) -> bool:
        return self.hook_attn_scores.active or self.hook_pattern.active

    def describe(
        self,
        *,
        device: str,
        dtype: torch.dtype,
        t_q: int,
        t_k: int,
        score_mod: ScoreMod | None,
        bias: PositionBias | None,
        mask: MaskKind | None = None,
        positions: bool = False,
    ) -> dispatch.Call:
        """This layer's call as the dispatch table reads it (see ``attnlab.attention.dispatch.Call``); ``mask``: the
        kind of a caller's mask that hides keys beyond the layer's rule; ``positions``: the score_mod reads caller
        positions."""
        norm, backend = self.normaliser, self.cfg.backend
        n_heads = self.site.n_heads
        tile_rule = isinstance(norm, TiledNormaliser)
        native_rule = tile_rule and native.covers(
            norm.chunked_rule(),
            device=device,
            dtype=dtype,
            n_heads=n_heads,
            score_mod=score_mod is not None,
            bias=bias,
            qk_norm=norm.normalises_in_kernel(),
        )
        triton_rule = tile_rule and fast_triton.supports(norm.chunked_rule())
        kind = "alibi" if isinstance(bias, AlibiBias) else "relative" if isinstance(bias, RelativeBias) else None
        return dispatch.Call(
            backend=backend,
            device=device,
            dtype=dtype,
            t_q=t_q,
            t_k=t_k,
            n_heads=n_heads,
            causal=self.causal,
            cross=self.site.cross,
            window=self.cfg.window,
            wants_weights=self.wants_weights(),
            normaliser=self.normaliser_name,
            sdpa_ok=self.sdpa_ok,
            sdpa_forms=hasattr(norm, "attend_sdpa"),
            softcap=getattr(norm, "softcap", None) is not None,
            tile_rule=tile_rule,
            native_rule=native_rule,
            triton_rule=triton_rule,
            flex_method=hasattr(norm, "attend_flex"),
            normaliser_attends=hasattr(norm, "attend"),
            backend_method=hasattr(norm, f"attend_{backend}"),
            heads_attend=hasattr(self.heads, "attend"),
            heads_sdpa=hasattr(self.heads, "attend_sdpa"),
            position_attends=hasattr(self.position, "attend"),
            score_mod=score_mod is not None,
            bias=kind,
            mask=mask,
            positions=positions and score_mod is not None,
            native_available=native.available,
            triton_available=lambda: fast_triton.available(device) is None,
        )

    def choose_path(
        self,
        *,
        t_q: int,
        t_k: int | None = None,
        device: str = "cpu",
        dtype: torch.dtype = torch.float32,
        triton_runs: bool | None = None,
        mask: MaskKind | None = None,
        positions: bool = False,
    ) -> dispatch.Choice:
        """The path this layer would take now (hooks as attached) for Tq queries against Tk keys (default Tq);
        ``triton_runs`` fixes whether the Triton kernels run on ``device`` (default: ask, as the forward pass does);
        ``mask`` / ``positions``: with a caller's mask of that kind, with caller positions."""
        call = self.describe(
            device=device,
            dtype=dtype,
            t_q=t_q,
            t_k=t_q if t_k is None else t_k,
            score_mod=self.position.score_mod(),
            bias=self.position.score_bias(),
            mask=mask,
            positions=positions,
        )
        return dispatch.choose(call if triton_runs is None else dispatch.with_triton(call, triton_runs))

    def run_path(
        self,
        path: str,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        *,
        x: Tensor,
        start: int,
        raw_qk: tuple[Tensor, Tensor],
        causal: bool,
        scale: float | None,
        score_mod: ScoreMod | None,
        bias: PositionBias | None,
        mask: Tensor | None = None,
    ) -> AttnOutput:
        """Attention on ``path`` (``dispatch.choose``'s choice: each path serves the calls it is chosen for).

        ``mask``: a caller's boolean [B|1, H|1, Tq, Tk] with the layer's rule folded in and no row that sees
        nothing (``masks.guard_empty``); only the paths the table sends masked calls to receive it."""
        norm, window = self.normaliser, self.cfg.window
        common: dict = dict(normaliser=norm, causal=causal, scale=scale, window=window)
        if mask is not None:
            if path in ("sdpa_alibi", "sdpa_relative", "native", "heads_sdpa", "triton"):
                raise ValueError(f"path={path!r} cannot take a caller's mask (see attnlab.attention.dispatch.PATHS)")
            common["mask"] = mask
        if path == "position":
            return self.position.attend(q, k, v, x=x, start=start, **common)
        if path == "sdpa":
            return AttnOutput(sdpa(q, k, v, causal=causal, scale=scale, window=window, mask=mask), None, None)
        if path in ("sdpa_alibi", "sdpa_relative"):
            return norm.attend_sdpa(q, k, v, bias=bias, **common)
        if path in ("native", "chunked"):
            tiles = dict(score_mod=score_mod, bias=bias, raw_qk=raw_qk, native=path == "native")
            return norm.attend_chunked(q, k, v, **common, **tiles)
        if path == "heads_sdpa":
            return self.heads.attend_sdpa(q, k, v, bias=bias, **common)
        if path == "heads":
            return self.heads.attend(q, k, v, score_mod=score_mod, **common)
        if path == "triton":
            return fast_triton.attend_triton(norm, q, k, v, causal=causal, scale=scale, window=window, raw_qk=raw_qk)
        if path == "flex":  # backend flex, or backend auto on CUDA
            return norm.attend_flex(q, k, v, score_mod=score_mod, **common)
        if path in ("kernel_chunked", "recurrent", "fft"):
            return getattr(norm, f"attend_{self.cfg.backend}")(q, k, v, score_mod=score_mod, **common)
        if path == "normaliser":
            return norm.attend(q, k, v, score_mod=score_mod, **common)
        if path == "reference":  # the masked scores only when a hook reads them
            return attend_reference(q, k, v, score_mod=score_mod, keep_scores=self.hook_attn_scores.active, **common)
        raise ValueError(f"path={path!r}: unknown (allowed: {', '.join(dispatch.PATHS)})")

    def output_from_pattern(self, weights: Tensor, v: Tensor) -> Tensor:
        """``z = weights @ v`` for a pattern a ``hook_pattern`` hook replaced (ACT, pattern patching).

        Only where the output is the pattern times the values (the plain reference path); a mechanism that
        computes its output otherwise (kernel attention, differential or talking heads) refuses the edit
        rather than silently ignoring it.
        """
        if hasattr(self.heads, "attend") or hasattr(self.normaliser, "attend"):
            raise ValueError(
                "a hook_pattern edit cannot reach the output of this layer: its mechanism does not compute "
                "z = pattern @ v (edit hook_z instead)"
            )
        v = repeat_kv(v, weights.shape[1] // v.shape[1])
        return (weights @ v.to(weights.dtype)).to(v.dtype)

    @property
    def causal(self) -> bool:
        """Whether query i sees only keys j ≤ i (+ Tk − Tq): a causal self-attention site, or a cross site that asks
        for it (``AttentionSite.causal_cross``: the context aligned token for token with the queries)."""
        return self.site.causal_cross if self.site.cross else self.site.causal

    def refusal(self, *, positions: bool, masked: bool, cache: object = None) -> str | None:
        """One line for a caller's positions or mask where this layer's mechanism does not define them, else None
        (the forward pass raises it; the dispatch tests skip such calls)."""
        why = None
        if masked and hasattr(self.normaliser, "attend"):
            why = "mask", "kernel attention's scans sum over every key; an arbitrary mask is not defined there"
        elif masked and hasattr(self.position, "attend"):
            why = "mask", "this position encoding computes attention itself, with its own masks"
        elif masked and hasattr(self.heads, "attend") and "mask" not in inspect.signature(self.heads.attend).parameters:
            why = "mask", "these heads compute attention themselves and take no caller's mask"
        elif positions and hasattr(self.position, "attend"):
            why = "position_ids", "this position encoding derives its traversal orders from token indices"
        elif positions and hasattr(self.normaliser, "attend_fft"):
            why = "position_ids", "this normaliser's relative position term is a Toeplitz matrix over token indices"
        elif positions and cache is not None and hasattr(cache, "extend_rotated"):
            why = "position_ids", "this KV cache assigns every key's position itself"
        if why is None:
            return None
        field, reason = why
        return f"{field}: {reason} (layer {self.cfg.label}, position {self.cfg.position}); allowed: {field}=None"

    def forward(
        self,
        x: Tensor,
        context: Tensor | None = None,
        cache: LayerKVCache | None = None,
        *,
        position_ids: Tensor | None = None,
        mask: AttentionMask | Tensor | None = None,
    ) -> Tensor:
        """x [B, T, D]; context [B, S, D] for cross-attention; cache for incremental self-attention.

        ``position_ids`` [T] or [B, T]: the queries' positions (default: their indices, after the cache), for the
        rotation and a score_mod (ALiBi, T5); with a cache every key keeps the position it was given.
        ``mask``: an ``AttentionMask`` (or a tensor ``masks.as_attention_mask`` reads) over every key, and-ed with
        the layer's causal / window rule; a query that sees no key gets output 0. Ids equal to the indices and a
        mask that hides nothing beyond the rule run exactly the call without them.
        """
        if self.site.cross and context is None:
            raise ValueError("cross-attention needs a context tensor [B, S, D]")
        self_cache = cache if (cache is not None and not self.site.cross) else None
        start = self_cache.length if self_cache is not None else 0
        pos = None if self.site.cross else resolve_positions(position_ids, start, x.shape[1], x.shape[0])
        user_mask = as_attention_mask(mask)
        refused = self.refusal(positions=pos is not None, masked=user_mask is not None, cache=self_cache)
        if refused is not None:
            raise ValueError(refused)
        projection = self.heads.project(x, context)
        q, k = projection.q, projection.k
        if self.q_norm is not None:  # qk-norm: on every path, before rotation and before the KV cache
            q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = self.hook_q(q), self.hook_k(k), self.hook_v(projection.v)
        key_pos = pos
        if self_cache is not None and hasattr(self_cache, "extend_rotated"):
            # the cache rotates: q at the positions it assigns, and every cached key (hook_rot_k sees them all)
            q, k, v = self_cache.extend_rotated(self.position, q, k, v)
            q, k = self.hook_rot_q(q), self.hook_rot_k(k)
        else:
            positions = pos if pos is not None else torch.arange(start, start + x.shape[1], device=x.device)
            if hasattr(self.heads, "rotate"):
                q, k = self.heads.rotate(self.position, q, k, positions)
            else:
                q, k = self.position.rotate(q, k, positions)
            q, k = self.hook_rot_q(q), self.hook_rot_k(k)
            if self_cache is not None:
                key_pos = self_cache.extend_positions(pos, x.shape[1], x.device)
                if hasattr(self.heads, "extend_cache"):
                    k, v = self.heads.extend_cache(self_cache, k, v, projection.latent)
                else:
                    k, v = self_cache.append(k, v)
        raw_qk = (q, k)  # before prepare: the tiles of LSSA normalise these themselves
        q, k, scale = self.normaliser.prepare(q, k, self.cfg.scale)
        score_mod, bias = self.position.score_mod(), self.position.score_bias()
        if score_mod is not None and key_pos is not None:
            score_mod = positional_score_mod(score_mod, key_pos)
        t_q, t_k = q.shape[2], k.shape[2]
        visible = layer_mask(user_mask, t_q, t_k, q.device, causal=self.causal, window=self.cfg.window)
        guarded, empty = (None, None) if visible is None else guard_empty(visible)
        call = self.describe(
            device=q.device.type,
            dtype=q.dtype,
            t_q=t_q,
            t_k=t_k,
            score_mod=score_mod,
            bias=bias,
            mask=None if visible is None else user_mask.kind,  # type: ignore[union-attr]
            positions=key_pos is not None,
        )
        path = dispatch.choose(call).path
        res = self.run_path(
            path,
            q,
            k,
            v,
            x=x,
            start=start,
            raw_qk=raw_qk,
            causal=self.causal,
            scale=scale,
            score_mod=score_mod,
            bias=bias,
            # the dense paths give a row that sees nothing weights 0 themselves (``core.normalise``), per head map;
            # the fused ones compute it over every key (``guard_empty``) and it is zeroed below
            mask=visible if path in ("reference", "heads") else guarded,
        )
        z = zero_empty(res.out, empty)
        weights, scores = zero_empty(res.weights, empty), zero_empty(res.scores, empty, float("-inf"))
        if path == "position":  # a position's own computation shows its pattern; edits reach hook_z only
            if weights is not None:
                self.hook_pattern(weights)
        else:
            if scores is not None:
                self.hook_attn_scores(scores)
            if weights is not None:
                edited = self.hook_pattern(weights)
                if edited is not weights:  # a hook replaced the pattern: the output must follow it
                    z = self.output_from_pattern(edited, v)
        z = self.hook_z(z)  # [B, H, T, d]
        return self.heads.combine(z, x)


def sdpa(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    causal: bool,
    scale: float | None,
    window: int | None = None,
    mask: Tensor | None = None,
) -> Tensor:
    """PyTorch's fused softmax attention with the reference's conventions (GQA, bottom-right causal). ``mask``:
    boolean [B|1, H|1, Tq, Tk] with the rule folded in, used instead of it; a row that sees no key has output 0
    (SDPA alone gives NaN there: ``masks.guard_empty``)."""
    t_q, t_k = q.shape[2], k.shape[2]
    gqa = q.shape[1] != k.shape[1]
    if mask is not None:
        mask, empty = guard_empty(mask)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=gqa)
        return zero_empty(out, empty)  # type: ignore[return-value]
    if window is not None or (causal and t_q != t_k):
        mask = build_mask(t_q, t_k, q.device, causal, window)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=gqa)
    return F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale, enable_gqa=gqa)


def qk_norms(cfg: AttentionConfig, site: AttentionSite, heads: nn.Module) -> tuple[nn.Module | None, nn.Module | None]:
    """The query and key norms of ``cfg.qk_norm`` (None, None when off), sized by the heads' q and k vectors.

    The size is read off one projection of a zero token (MLA's queries are nope + rope wide, differential heads
    split theirs), so every heads module gets norms that fit it without declaring its widths.
    """
    if cfg.qk_norm is None:
        return None, None
    with torch.no_grad():
        probe = torch.zeros(1, 1, site.d_model)
        projection = heads.project(probe, probe if site.cross else None)
    norm = nn.LayerNorm if cfg.qk_norm == "layernorm" else nn.RMSNorm
    return norm(projection.q.shape[-1]), norm(projection.k.shape[-1])


def build_attention(cfg: AttentionConfig, site: AttentionSite) -> Attention:
    """The one entry point the model uses; it never names a mechanism."""
    return Attention(cfg, site)
