"""The one place that decides how a layer computes attention: a description of the call, and a table of rules.

``Attention.forward`` describes its call once (``Call``: the layer's entries' traits, the requested backend, the
window, causal / cross, device, dtype, whether a hook reads the scores or weights, Tq, Tk, the position's score_mod
and typed bias, whether the compiled kernels are available) and asks ``choose(call)``, which walks ``RULES`` in
order and returns the first rule whose predicate holds as a ``Choice`` (path, rule, reason). Each path
(``PATHS``) only computes: it serves exactly the calls its own ``serves`` predicate admits, and no rule picks a
path for a call that path cannot serve (``tests/attention/test_dispatch.py`` checks both over a grid of calls).
``attnlab.model.explain`` asks the same ``choose`` for every layer of a model config.

The paths (what runs, where it lives):

- ``position``: a position that owns the computation (2D-TPE's router over traversal orders), ``position.attend``;
- ``sdpa``: PyTorch's fused softmax (``attnlab.attention.build.sdpa``);
- ``sdpa_alibi`` / ``sdpa_relative``: the exact SDPA forms of the position's typed bias
  (``attnlab.attention.fast.sdpa_alibi`` / ``sdpa_relative``);
- ``native``: the normaliser's tile rule on the compiled CPU kernels (``attnlab.attention.fast.native``);
- ``chunked``: the same rule in PyTorch tiles (``attnlab.attention.fast.chunked``);
- ``flex``: compiled FlexAttention (``attnlab.attention.fast.flex``);
- ``triton``: the normaliser's chunked rule as a Triton kernel on CUDA (``attnlab.attention.fast.triton``);
- ``kernel_chunked`` / ``recurrent`` / ``fft``: kernel (linear) attention's chunked scan, recurrence, FFT;
- ``heads_sdpa`` / ``heads``: a heads module's own SDPA form (sinks) or its own computation (differential,
  talking heads, sinks, relative convolutions);
- ``normaliser``: a normaliser's own quadratic reference (kernel attention);
- ``reference``: ``attend_reference``, the dense spec that returns scores and weights.

The rules reproduce the decisions the layer made before this table existed, so the same call takes the same
path: a hook that reads scores or weights forces a path that returns them; backend auto on CPU sends a sliding
window much shorter than the keys to the tiles (SDPA would build and compute the whole [Tq, Tk] mask), and
soft-capping, ALiBi and T5 to the compiled kernels (faster than their SDPA forms: the README's speed table); what
used to fall back silently inside a path (a T5 bias too large to materialise, flex on float64 or a KV cache, sinks
with a bias SDPA cannot express) is a rule of its own here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Literal

import torch

from attnlab.attention.fast import flex as flex_kernels
from attnlab.attention.fast import sdpa_band, sdpa_relative
from attnlab.types import MaskKind

BiasKind = Literal["alibi", "relative"]
WINDOW_CHUNKED_KEYS = 4  # backend auto on CPU: a window of w keys runs in tiles from 4·w keys on


@dataclass(frozen=True)
class Call:
    """What decides a layer's path; built by ``Attention.describe`` (or by hand, in tests and ``explain``)."""

    backend: str = "auto"  # the config's backend: auto | reference | sdpa | chunked | flex | recurrent | fft
    device: str = "cpu"
    dtype: torch.dtype = torch.float32
    t_q: int = 1
    t_k: int = 1
    n_heads: int = 1
    causal: bool = True  # the layer's rule: a causal self-attention site, or a cross site with causal_cross
    cross: bool = False
    window: int | None = None
    wants_weights: bool = False  # a hook reads hook_attn_scores or hook_pattern
    normaliser: str = "softmax"  # the registry name (for explanations)
    sdpa_ok: bool = True  # the normaliser's entry declares sdpa and this instance can run it (no soft-capping)
    sdpa_forms: bool = True  # the normaliser has exact SDPA forms of typed biases (softmax's attend_sdpa)
    softcap: bool = False  # softmax with logit soft-capping
    tile_rule: bool = True  # the normaliser is computed by a tile rule (chunked backend of score normalisers)
    native_rule: bool = True  # the compiled kernels run that rule for this call (``native.covers``)
    triton_rule: bool = False  # that rule has a Triton kernel (``fast.triton.supports``: not soft-capping)
    flex_method: bool = False  # the normaliser has ``attend_flex`` (softmax)
    normaliser_attends: bool = False  # kernel (linear) attention: the normaliser computes attention itself
    backend_method: bool = False  # the normaliser has ``attend_<backend>`` for the requested backend
    heads_attend: bool = False  # the heads module computes attention itself (differential, talking, sinks)
    heads_sdpa: bool = False  # ... and has an SDPA form of it (sinks)
    position_attends: bool = False  # the position computes attention itself (2D-TPE)
    score_mod: bool = False  # the position modifies scores
    bias: BiasKind | None = None  # ... with a typed bias (ALiBi, T5) the SDPA forms and the kernels apply
    # a caller's mask beyond the layer's own rule (``AttentionMask.kind``): served by the paths that take a boolean
    # [B|1, H|1, Tq, Tk] (reference, SDPA, PyTorch tiles, flex, heads' own attention), never by the compiled
    # kernels, Triton, the SDPA forms of a bias or of sinks, or kernel attention (the layer refuses those)
    mask: MaskKind | None = None
    # per-token positions that the score_mod reads (ALiBi / T5 at the caller's positions): the paths that apply a
    # typed bias over index distances (the SDPA forms, the kernels) cannot serve them
    positions: bool = False
    # whether the compiled kernels are built (building them on first use takes ~45 s: asked only when needed)
    native_available: Callable[[], bool] = field(default=lambda: False, compare=False, repr=False)
    # whether the Triton kernels run on this call's device (``fast.triton.available(device) is None``)
    triton_available: Callable[[], bool] = field(default=lambda: False, compare=False, repr=False)


@dataclass(frozen=True)
class Choice:
    path: str
    rule: str
    reason: str


@dataclass(frozen=True)
class Rule:
    name: str
    path: str
    when: Callable[[Call], bool]
    reason: str


# --- traits the rules share -------------------------------------------------------------------------------------


def fused(c: Call) -> bool:
    """Backend auto or sdpa, a normaliser SDPA can run, and no hook reading the weights (SDPA returns none)."""
    return c.backend in ("auto", "sdpa") and c.sdpa_ok and not c.wants_weights


def relative_bias_fits(c: Call) -> bool:
    """The T5 SDPA form runs on CPU: banded (O(T) memory) when Tq = Tk without a window, else as an [H, Tq, Tk]
    mask up to ``RELATIVE_BIAS_MAX_ELEMENTS`` (beyond, the tiles' O(T) memory is the better choice)."""
    banded = sdpa_band.BANDED and c.t_q == c.t_k and c.window is None
    small = c.n_heads * c.t_q * c.t_k <= sdpa_relative.RELATIVE_BIAS_MAX_ELEMENTS
    return c.device == "cpu" and (banded or small)


def index_bias(c: Call) -> bool:
    """No caller mask and no caller positions: what the paths built on index distances and causal / window rules
    alone need (the compiled kernels, Triton, the SDPA forms of ALiBi, T5 and sinks)."""
    return c.mask is None and not c.positions


def kernels_run(c: Call) -> bool:
    """The compiled kernels compute this call and are built (asked last: the first ask builds them)."""
    return c.device == "cpu" and c.tile_rule and c.native_rule and index_bias(c) and c.native_available()


def flex_runs(c: Call) -> bool:
    return flex_kernels.runs_on(c.dtype, c.t_q, c.t_k, c.device)


TRITON_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def triton_runs(c: Call) -> bool:
    """A CUDA call of a score normaliser whose chunked rule has a Triton kernel, without a score_mod (no kernel
    applies one) or a hook reading the weights, in a dtype the kernels take, with triton able to run there."""
    return (
        c.device == "cuda"
        and _score_path(c)
        and c.tile_rule
        and c.triton_rule
        and not c.score_mod
        and not c.wants_weights
        and c.dtype in TRITON_DTYPES
        and c.mask is None
        and c.triton_available()
    )


def auto_flex_on_cuda(c: Call) -> bool:
    """Backend auto on CUDA for softmax with a score_mod or soft-capping (no SDPA form above took it), where
    compiled FlexAttention runs, with no hook reading the weights."""
    return (
        c.backend == "auto"
        and c.device == "cuda"
        and _score_path(c)
        and c.flex_method
        and (c.score_mod or c.softcap)
        and not c.wants_weights
        and flex_runs(c)
    )


def window_goes_tiled(c: Call) -> bool:
    """Backend auto, fused softmax, a sliding window and a CPU call with at least ``WINDOW_CHUNKED_KEYS`` windows of
    keys: the tiles skip those outside the window (O(T·window) time and memory) where SDPA materialises the
    [Tq, Tk] mask and computes every tile (measured at T = 2048, window 256: 0.9× plain causal SDPA's time
    instead of 2.1×, and at T = 8192 0.9× its memory instead of 4.2×)."""
    return (
        c.backend == "auto"
        and c.window is not None
        and c.device == "cpu"
        and c.t_k >= WINDOW_CHUNKED_KEYS * c.window
        and c.tile_rule
        and fused(c)
        and not c.score_mod
        and not c.heads_attend
    )


def auto_prefers_kernels(c: Call) -> bool:
    """Backend auto on CPU for softmax with soft-capping (SDPA cannot cap) or an ALiBi / T5 bias (the kernels beat
    their SDPA forms), no other score_mod, and no hook reading the weights."""
    return (
        c.backend == "auto"
        and c.device == "cpu"
        and not c.wants_weights
        and c.sdpa_forms
        and (c.softcap or c.bias is not None)
        and (not c.score_mod or c.bias is not None)
    )


def masked_in_tiles(c: Call) -> bool:
    """Backend auto or sdpa, a caller's mask or positions, and a score_mod or soft-capping (whose fused forms take
    neither): the PyTorch tiles take the mask as tiles and the score_mod at the caller's positions."""
    return (
        c.backend in ("auto", "sdpa")
        and (c.mask is not None or c.positions)
        and (c.score_mod or c.softcap)
        and c.tile_rule
        and _score_path(c)
        and not c.wants_weights
    )


def own_backend(c: Call) -> bool:
    """A backend the normaliser declares beyond auto / reference / sdpa, and no hook reading the weights."""
    return c.backend not in ("auto", "reference", "sdpa") and not c.wants_weights


# --- the table --------------------------------------------------------------------------------------------------

RULES: tuple[Rule, ...] = (
    Rule(
        "position-owns-attention",
        "position",
        lambda c: c.position_attends,
        "the position encoding computes attention itself (it reads the layer input)",
    ),
    Rule(
        "window-on-kernels",
        "native",
        lambda c: window_goes_tiled(c) and kernels_run(c),
        "backend auto, a window far shorter than the keys on CPU: compiled tiles skip the hidden keys",
    ),
    Rule(
        "window-in-tiles",
        "chunked",
        window_goes_tiled,
        "backend auto, a window far shorter than the keys on CPU: tiles skip the hidden keys (kernels not built)",
    ),
    Rule(
        "plain-sdpa",
        "sdpa",
        lambda c: fused(c) and not c.score_mod and not c.heads_attend,
        "softmax with no score_mod and no hook on the weights: PyTorch's fused SDPA",
    ),
    Rule(
        "heads-sdpa-form",
        "heads_sdpa",
        lambda c: (
            c.heads_attend and c.heads_sdpa and fused(c) and index_bias(c) and (not c.score_mod or c.bias == "alibi")
        ),
        "the heads module's exact SDPA form (no hook on the weights, no bias or ALiBi)",
    ),
    Rule(
        "heads-own-attention",
        "heads",
        lambda c: c.heads_attend,
        "the heads module computes attention itself (its weights are not normaliser(scores))",
    ),
    Rule(
        "auto-on-triton",
        "triton",
        lambda c: c.backend == "auto" and triton_runs(c),
        "backend auto on CUDA: the normaliser's chunked rule as a Triton kernel (no score_mod, no hook on the weights)",
    ),
    Rule(
        "auto-on-kernels",
        "native",
        lambda c: auto_prefers_kernels(c) and kernels_run(c),
        "backend auto on CPU: soft-capping or an ALiBi / T5 bias runs fastest on the compiled kernels",
    ),
    Rule(
        "bias-sdpa-form",
        "sdpa_alibi",
        lambda c: fused(c) and c.score_mod and c.sdpa_forms and c.bias == "alibi" and index_bias(c),
        "ALiBi as two exact columns of SDPA's q and k",
    ),
    Rule(
        "relative-bias-sdpa-form",
        "sdpa_relative",
        lambda c: (
            fused(c)
            and c.score_mod
            and c.sdpa_forms
            and c.bias == "relative"
            and relative_bias_fits(c)
            and index_bias(c)
        ),
        "a T5 bias through SDPA on CPU: banded, or a mask small enough to materialise",
    ),
    Rule(
        "auto-flex-on-cuda",
        "flex",
        auto_flex_on_cuda,
        "backend auto on CUDA: softmax with a score_mod or soft-capping through compiled FlexAttention",
    ),
    Rule(
        "mask-in-tiles",
        "chunked",
        masked_in_tiles,
        "a caller's mask or positions with a score_mod or soft-capping: the PyTorch tiles take both (the fused "
        "forms of a bias and the compiled kernels take neither)",
    ),
    Rule(
        "relative-bias-too-large-on-kernels",
        "native",
        lambda c: fused(c) and c.score_mod and c.sdpa_forms and c.bias == "relative" and kernels_run(c),
        "a T5 bias too large to materialise (or off CPU): O(T) memory in compiled tiles",
    ),
    Rule(
        "relative-bias-too-large-in-tiles",
        "chunked",
        lambda c: fused(c) and c.score_mod and c.sdpa_forms and c.bias == "relative" and c.tile_rule,
        "a T5 bias too large to materialise, or off CPU: O(T) memory in tiles",
    ),
    Rule(
        "flex",
        "flex",
        lambda c: own_backend(c) and c.backend == "flex" and flex_runs(c),
        "backend flex: compiled FlexAttention",
    ),
    Rule(
        "flex-unavailable-on-kernels",
        "native",
        lambda c: own_backend(c) and c.backend == "flex" and kernels_run(c),
        "backend flex cannot run float64, a KV cache (Tq < Tk) or this device: the same softmax, compiled tiles",
    ),
    Rule(
        "flex-unavailable-in-tiles",
        "chunked",
        lambda c: own_backend(c) and c.backend == "flex" and c.tile_rule,
        "backend flex cannot run float64, a KV cache (Tq < Tk) or this device: the same softmax in tiles",
    ),
    Rule(
        "chunked-on-kernels",
        "native",
        lambda c: own_backend(c) and c.backend == "chunked" and c.tile_rule and kernels_run(c),
        "backend chunked: the normaliser's tile rule on the compiled CPU kernels",
    ),
    Rule(
        "chunked",
        "chunked",
        lambda c: own_backend(c) and c.backend == "chunked" and c.tile_rule,
        "backend chunked: the normaliser's tile rule in PyTorch tiles",
    ),
    Rule(
        "kernel-attention-chunked",
        "kernel_chunked",
        lambda c: own_backend(c) and c.backend == "chunked" and c.normaliser_attends and c.backend_method,
        "backend chunked of kernel attention: quadratic inside chunks, a carried state between them",
    ),
    Rule(
        "recurrent",
        "recurrent",
        lambda c: own_backend(c) and c.backend == "recurrent" and c.backend_method,
        "backend recurrent: kernel attention token by token with a constant-size state",
    ),
    Rule(
        "fft",
        "fft",
        lambda c: own_backend(c) and c.backend == "fft" and c.backend_method,
        "backend fft: kernel attention's relative positions as a Toeplitz product through the FFT",
    ),
    Rule(
        "normaliser-own-reference",
        "normaliser",
        lambda c: c.normaliser_attends,
        "kernel attention's quadratic reference (its weights are not normaliser(scores))",
    ),
    Rule(
        "weights-wanted",
        "reference",
        lambda c: c.wants_weights,
        "a hook reads the scores or weights: the dense reference returns them",
    ),
    Rule(
        "backend-reference",
        "reference",
        lambda c: c.backend == "reference",
        "backend reference: the dense spec",
    ),
    Rule(
        "no-faster-path",
        "reference",
        lambda c: True,
        "no faster path serves this call on backend auto / sdpa (a normaliser SDPA cannot run, or a score_mod "
        "without a typed bias): the dense reference",
    ),
)

# --- what each path can serve -------------------------------------------------------------------------------------


def _score_path(c: Call) -> bool:
    """No other module owns the computation."""
    return not (c.position_attends or c.heads_attend or c.normaliser_attends)


PATHS: dict[str, Callable[[Call], bool]] = {
    "position": lambda c: c.position_attends and c.mask is None,
    "sdpa": lambda c: _score_path(c) and c.sdpa_ok and not c.score_mod and not c.wants_weights,
    "sdpa_alibi": lambda c: (
        _score_path(c) and c.sdpa_ok and c.sdpa_forms and c.bias == "alibi" and not c.wants_weights and index_bias(c)
    ),
    "sdpa_relative": lambda c: (
        _score_path(c)
        and index_bias(c)
        and c.sdpa_ok
        and c.sdpa_forms
        and c.bias == "relative"
        and relative_bias_fits(c)
        and not c.wants_weights
    ),
    "native": lambda c: (
        _score_path(c) and kernels_run(c) and (not c.score_mod or c.bias is not None) and not c.wants_weights
    ),
    "chunked": lambda c: _score_path(c) and c.tile_rule and not c.wants_weights,
    "flex": lambda c: (
        _score_path(c)
        and flex_runs(c)
        and not c.wants_weights
        and (c.backend_method if c.backend == "flex" else c.backend == "auto" and c.device == "cuda" and c.flex_method)
    ),
    "triton": triton_runs,
    "kernel_chunked": lambda c: (
        c.normaliser_attends and c.backend == "chunked" and c.backend_method and not c.wants_weights and not c.mask
    ),
    "recurrent": lambda c: (
        c.normaliser_attends and c.backend == "recurrent" and c.backend_method and not c.wants_weights and not c.mask
    ),
    "fft": lambda c: (
        c.normaliser_attends and c.backend == "fft" and c.backend_method and not c.wants_weights and not c.mask
    ),
    "heads_sdpa": lambda c: (
        c.heads_attend
        and c.heads_sdpa
        and c.sdpa_ok
        and not c.wants_weights
        and index_bias(c)
        and (not c.score_mod or c.bias == "alibi")
    ),
    "heads": lambda c: c.heads_attend and not c.position_attends,
    "normaliser": lambda c: c.normaliser_attends and not (c.position_attends or c.heads_attend) and not c.mask,
    "reference": lambda c: _score_path(c),
}


def choose(call: Call) -> Choice:
    """The first rule of ``RULES`` whose predicate holds for ``call``."""
    for rule in RULES:
        if rule.when(call):
            return Choice(rule.path, rule.name, rule.reason)
    raise AssertionError("the last rule holds for every call")  # pragma: no cover


def with_kernels(call: Call, available: bool) -> Call:
    """``call`` with the kernels' availability fixed (tests and explanations of a machine without a compiler)."""
    return replace(call, native_available=lambda: available)


def with_triton(call: Call, available: bool) -> Call:
    """``call`` with the Triton kernels' availability fixed (tests, and explanations of a machine without a GPU)."""
    return replace(call, triton_available=lambda: available)
