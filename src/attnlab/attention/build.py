"""``build_attention``: an ``AttentionConfig`` and a site → an attention module.

The module composes the four axes: heads project q, k, v; the position encoding rotates q, k or
modifies scores; the normaliser turns scores into weights; the backend computes it. Fused backends
never return weights, so whenever a hook reads ``hook_attn_scores`` or ``hook_pattern`` the layer
falls back to the reference (as transformers falls back to eager attention for ``output_attentions``).
On backend auto, a sliding window much shorter than the keys runs on the normaliser's chunked path on CPU
(``window_goes_chunked``): SDPA would materialise the [Tq, Tk] mask and compute every tile. Softmax with
soft-capping, ALiBi or T5 runs on the compiled CPU kernels on backend auto (``native_auto``), when they build.

Extension points, each optional, found by duck typing so the module never names a mechanism:

- ``heads.rotate(position, q, k, positions)``: a heads module that rotates only part of q, k (MLA's
  decoupled RoPE key) does it itself;
- ``heads.extend_cache(cache, k, v) -> (k_all, v_all)``: heads that cache something other than k and v
  (MLA / CLLA keep the latent) store it in the ``LayerKVCache`` and rebuild the full keys and values;
- ``heads.attend(q, k, v, *, normaliser, score_mod, causal, scale, window) -> AttnOutput``: heads that
  change the attention computation itself (differential pairs, talking heads, sink tokens);
  ``heads.attend_sdpa(...)`` (same signature): their fused form, used instead on backend auto / sdpa when no
  hook reads the weights;
- ``normaliser.attend(...)``: same signature, for mechanisms whose weights are not a function of q·k
  scores (kernel / linear attention: the quadratic reference);
- ``normaliser.attend_<backend>(...)``: a fast path declared in the normaliser's capability ``backends``
  (``chunked``, ``recurrent``), returning an AttnOutput whose scores and weights may be None;
  ``attend_sdpa`` is called on backend auto / sdpa when there is a score_mod (softmax: ALiBi, T5 via SDPA);
- ``normaliser.native_auto(score_mod) -> bool``: backend auto on CPU calls ``attend_chunked`` instead (softmax's
  soft-capping, ALiBi and T5 on the compiled kernels of ``attnlab.attention.fast.native``);
- ``position.attend(q, k, v, *, x, start, normaliser, causal, scale, window)``: a position encoding that owns
  the computation and reads the layer input ``x`` (2D-TPE's per-head router over traversal orders); q, k
  arrive unrotated and ``start`` is the absolute position of the first query.
- ``cache.extend_rotated(position, q, k, v) -> (q, k_all, v_all)``: a KV cache that keeps keys *before*
  rotation and chooses every key's position itself (StreamingLLM's positions within an evicted cache,
  ``attnlab.lens.kv_eviction``) appends the new k, v and returns the rotated queries and all rotated keys;
  the default ``LayerKVCache`` has no such method and caches keys after rotation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnlab.attention.config import AttentionConfig, AttentionSite
from attnlab.attention.core import AttnOutput, ScoreMod, attend_reference, build_mask, repeat_kv
from attnlab.attention.heads import HEADS
from attnlab.attention.normalisers import NORMALISERS
from attnlab.model.hooks import HookPoint
from attnlab.position import POSITIONS
from attnlab.position.base import NoPE, PositionEncoding


class LayerKVCache:
    """What one self-attention layer keeps for incremental decoding.

    By default the keys (after rotation) and values, [B, Hkv, S, d] each. A heads module that caches
    something else (MLA / CLLA: the compressed latent) defines ``extend_cache(cache, k, v)``, stores its own
    tensors with ``append_to`` and returns the full keys and values; ``length`` counts tokens either way.
    """

    def __init__(self) -> None:
        self.store: dict[str, Tensor] = {}
        self.length = 0

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
        self.normaliser = norm.factory(norm.params.model_validate(norm_args), site)
        # an instance may opt out of its entry's sdpa backend (softmax with soft-capping, which SDPA cannot apply)
        self.sdpa_ok = "sdpa" in norm.capabilities.backends and getattr(self.normaliser, "sdpa_ok", True)
        pos_cls = POSITIONS.get(cfg.position)
        self.position = NoPE() if (site.cross or pos_cls.absolute) else build_position(cfg, site)
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

    def use_fused(self) -> bool:
        if self.cfg.backend not in ("auto", "sdpa") or not self.sdpa_ok or self.wants_weights():
            return False
        return self.position.score_mod() is None and not hasattr(self.heads, "attend")

    def window_goes_chunked(self, k: Tensor) -> bool:
        """Backend auto, fused softmax, a sliding window and a CPU tensor with at least ``WINDOW_CHUNKED_KEYS``
        windows of keys: the chunked path (it skips the tiles outside the window: O(T·window) time and memory)
        instead of SDPA with a materialised [Tq, Tk] mask (measured at T = 2048, window 256: 0.9× plain causal
        SDPA's time instead of 2.1×, and at T = 8192 0.9× its memory instead of 4.2×)."""
        window = self.cfg.window
        return (
            self.cfg.backend == "auto"
            and window is not None
            and k.device.type == "cpu"
            and k.shape[2] >= WINDOW_CHUNKED_KEYS * window
            and hasattr(self.normaliser, "attend_chunked")
            and self.use_fused()
        )

    def native_auto(self, q: Tensor, score_mod: ScoreMod | None) -> bool:
        """Backend auto on CPU, no hook reading the weights, and a normaliser whose variant the compiled kernels
        run faster than its SDPA form or reference (softmax with soft-capping, ALiBi or T5: ``native_auto``)."""
        return (
            self.cfg.backend == "auto"
            and q.device.type == "cpu"
            and not self.wants_weights()
            and hasattr(self.normaliser, "native_auto")
            and self.normaliser.native_auto(score_mod)
        )

    def attend(self, q: Tensor, k: Tensor, v: Tensor, causal: bool, scale: float | None) -> AttnOutput:
        """Dispatch to the computation this layer's entries declare (see the module docstring)."""
        kwargs = dict(
            normaliser=self.normaliser,
            score_mod=self.position.score_mod(),
            causal=causal,
            scale=scale,
            window=self.cfg.window,
        )
        fused = self.cfg.backend in ("auto", "sdpa") and self.sdpa_ok and not self.wants_weights()
        if hasattr(self.heads, "attend"):
            if fused and hasattr(self.heads, "attend_sdpa"):  # e.g. sinks as SDPA over [sinks ⧺ keys]
                return self.heads.attend_sdpa(q, k, v, **kwargs)
            return self.heads.attend(q, k, v, **kwargs)
        if self.native_auto(q, kwargs["score_mod"]):  # soft-capping, ALiBi, T5 on CPU: the compiled kernels
            return self.normaliser.attend_chunked(q, k, v, **kwargs)
        if fused and kwargs["score_mod"] is not None and hasattr(self.normaliser, "attend_sdpa"):
            return self.normaliser.attend_sdpa(q, k, v, **kwargs)  # exact SDPA forms of ALiBi / T5
        backend = self.cfg.backend
        if backend not in ("auto", "reference", "sdpa") and not self.wants_weights():
            return getattr(self.normaliser, f"attend_{backend}")(q, k, v, **kwargs)
        if hasattr(self.normaliser, "attend"):
            return self.normaliser.attend(q, k, v, **kwargs)
        return attend_reference(q, k, v, **kwargs)

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

    def forward(self, x: Tensor, context: Tensor | None = None, cache: LayerKVCache | None = None) -> Tensor:
        """x [B, T, D]; context [B, S, D] for cross-attention; cache for incremental self-attention."""
        if self.site.cross and context is None:
            raise ValueError("cross-attention needs a context tensor [B, S, D]")
        q, k, v = self.heads.project(x, context)
        q, k, v = self.hook_q(q), self.hook_k(k), self.hook_v(v)
        start = cache.length if (cache is not None and not self.site.cross) else 0
        if cache is not None and not self.site.cross and hasattr(cache, "extend_rotated"):
            # the cache rotates: q at the positions it assigns, and every cached key (hook_rot_k sees them all)
            q, k, v = cache.extend_rotated(self.position, q, k, v)
            q, k = self.hook_rot_q(q), self.hook_rot_k(k)
        else:
            positions = torch.arange(start, start + x.shape[1], device=x.device)
            if hasattr(self.heads, "rotate"):
                q, k = self.heads.rotate(self.position, q, k, positions)
            else:
                q, k = self.position.rotate(q, k, positions)
            q, k = self.hook_rot_q(q), self.hook_rot_k(k)
            if cache is not None and not self.site.cross:
                if hasattr(self.heads, "extend_cache"):
                    k, v = self.heads.extend_cache(cache, k, v)
                else:
                    k, v = cache.append(k, v)
        q, k, scale = self.normaliser.prepare(q, k, self.cfg.scale)
        causal = self.site.causal and not self.site.cross
        if hasattr(self.position, "attend"):
            # A position that owns the computation (2D-TPE: two traversal orders mixed by a router reading the
            # layer input). Its rotate() is the identity, so q, k and the cache hold unrotated vectors.
            res = self.position.attend(
                q,
                k,
                v,
                x=x,
                start=start,
                normaliser=self.normaliser,
                causal=causal,
                scale=scale,
                window=self.cfg.window,
            )
            if res.weights is not None:
                self.hook_pattern(res.weights)
            return self.heads.combine(self.hook_z(res.out), x)
        if self.window_goes_chunked(k):
            z = self.normaliser.attend_chunked(
                q, k, v, normaliser=self.normaliser, causal=causal, scale=scale, window=self.cfg.window
            ).out
        elif self.use_fused():
            z = sdpa(q, k, v, causal=causal, scale=scale, window=self.cfg.window)
        else:
            res = self.attend(q, k, v, causal, scale)
            if res.scores is not None:
                self.hook_attn_scores(res.scores)
            z = res.out
            if res.weights is not None:
                weights = self.hook_pattern(res.weights)
                if weights is not res.weights:  # a hook replaced the pattern: the output must follow it
                    z = self.output_from_pattern(weights, v)
        z = self.hook_z(z)  # [B, H, T, d]
        return self.heads.combine(z, x)


WINDOW_CHUNKED_KEYS = (
    4  # backend auto on CPU: a window of w keys runs chunked from 4·w keys on (see window_goes_chunked)
)


def sdpa(q: Tensor, k: Tensor, v: Tensor, *, causal: bool, scale: float | None, window: int | None = None) -> Tensor:
    """PyTorch's fused softmax attention with the reference's conventions (GQA, bottom-right causal)."""
    t_q, t_k = q.shape[2], k.shape[2]
    gqa = q.shape[1] != k.shape[1]
    if window is not None or (causal and t_q != t_k):
        mask = build_mask(t_q, t_k, q.device, causal, window)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=gqa)
    return F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale, enable_gqa=gqa)


def build_attention(cfg: AttentionConfig, site: AttentionSite) -> Attention:
    """The one entry point the model uses; it never names a mechanism."""
    return Attention(cfg, site)
