"""The dispatch table: every rule is reachable, and no rule picks a path that cannot serve the call."""

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest
import torch

from attnlab.attention import AttentionConfig, AttentionSite, build_attention, dispatch
from attnlab.errors import ConfigError

# One call per rule on which that rule decides (``choose`` returns it): every rule is reachable.
BASE = dispatch.Call(t_q=64, t_k=64, n_heads=4)
KERNELS = dispatch.with_kernels(BASE, True)
KERNEL_ATTENTION = replace(
    BASE, sdpa_ok=False, sdpa_forms=False, tile_rule=False, native_rule=False, normaliser_attends=True
)
SIGMOID = replace(BASE, sdpa_ok=False, sdpa_forms=False)
WITNESSES = {
    "position-owns-attention": replace(BASE, position_attends=True),
    "window-on-kernels": replace(KERNELS, window=8),
    "window-in-tiles": replace(BASE, window=8),
    "plain-sdpa": BASE,
    "heads-sdpa-form": replace(BASE, heads_attend=True, heads_sdpa=True),
    "heads-own-attention": replace(BASE, heads_attend=True),
    "auto-on-triton": dispatch.with_triton(replace(SIGMOID, device="cuda", triton_rule=True), True),
    "auto-on-kernels": replace(KERNELS, softcap=True, sdpa_ok=False),
    "bias-sdpa-form": replace(BASE, score_mod=True, bias="alibi"),
    "relative-bias-sdpa-form": replace(BASE, score_mod=True, bias="relative"),
    "auto-flex-on-cuda": replace(BASE, device="cuda", score_mod=True, bias="relative", flex_method=True),
    "mask-in-tiles": replace(BASE, score_mod=True, bias="alibi", mask="boolean"),
    "relative-bias-too-large-on-kernels": replace(
        KERNELS, backend="sdpa", score_mod=True, bias="relative", t_q=2, t_k=2**26
    ),
    "relative-bias-too-large-in-tiles": replace(BASE, device="cuda", score_mod=True, bias="relative"),
    "flex": replace(BASE, backend="flex", backend_method=True),
    "flex-unavailable-on-kernels": replace(KERNELS, backend="flex", backend_method=True, dtype=torch.float64),
    "flex-unavailable-in-tiles": replace(BASE, backend="flex", backend_method=True, t_q=1),
    "chunked-on-kernels": replace(KERNELS, backend="chunked", backend_method=True),
    "chunked": replace(BASE, backend="chunked", backend_method=True),
    "kernel-attention-chunked": replace(KERNEL_ATTENTION, backend="chunked", backend_method=True),
    "recurrent": replace(KERNEL_ATTENTION, backend="recurrent", backend_method=True),
    "fft": replace(KERNEL_ATTENTION, backend="fft", backend_method=True),
    "normaliser-own-reference": KERNEL_ATTENTION,
    "weights-wanted": replace(BASE, wants_weights=True),
    "backend-reference": replace(BASE, backend="reference"),
    "no-faster-path": SIGMOID,
}


def test_the_witnesses_cover_every_rule_once() -> None:
    names = [rule.name for rule in dispatch.RULES]
    assert len(set(names)) == len(names)
    assert sorted(WITNESSES) == sorted(names)
    assert {rule.path for rule in dispatch.RULES} == set(dispatch.PATHS)


@pytest.mark.parametrize("rule", list(WITNESSES))
def test_every_rule_decides_some_call(rule: str) -> None:
    choice = dispatch.choose(WITNESSES[rule])
    assert choice.rule == rule
    assert dispatch.PATHS[choice.path](WITNESSES[rule]), f"{choice.path} cannot serve its witness"


# --- real layers: every configuration of a representative grid, described as the forward pass describes it ---

NORMALISERS = {
    "softmax": {},
    "softcap": {"softcap": 30.0},
    "sigmoid": {},
    "cog": {},
    "lssa": {},
    "clipped_softmax": {},
    "relu": {},
    "linear_elu": {},
    "kernel_rpe_fft": {},
}
HEADS = {"mha": {}, "sinks": {"n_sinks": 1}, "differential": {}, "mla": {"kv_rank": 8}}
POSITIONS = ["nope", "rope", "alibi", "t5", "tpe2d"]
BACKENDS = ["auto", "reference", "sdpa", "chunked", "flex", "recurrent", "fft"]


def layers() -> list[tuple[str, torch.nn.Module]]:
    site = AttentionSite(d_model=32, n_heads=4, seq_len=64)
    built = []
    for (norm, norm_args), (heads, heads_args), position, backend, window in itertools.product(
        NORMALISERS.items(), HEADS.items(), POSITIONS, BACKENDS, [None, 4]
    ):
        name = "softmax" if norm == "softcap" else norm
        try:
            cfg = AttentionConfig(
                normaliser=name,
                normaliser_args=norm_args,
                heads=heads,
                heads_args=heads_args,
                position=position,
                backend=backend,
                window=window,
            )
            layer = build_attention(cfg, site)
        except (ConfigError, ValueError):
            continue  # a combination the registry refuses
        built.append((f"{norm}-{heads}-{position}-{backend}-w{window}", layer))
    return built


LAYERS = layers()


def test_the_grid_holds_every_path() -> None:
    """The grid below reaches every path at least once (so the property test covers them all)."""
    seen = set()
    for _, layer in LAYERS:
        for call in calls_of(layer):
            seen.add(dispatch.choose(call).path)
    assert seen == set(dispatch.PATHS)


MASKS = [None, "padding", "documents", "boolean"]


def calls_of(layer: torch.nn.Module) -> list[dispatch.Call]:
    """Every call the layer can make: devices, dtypes, shapes, kernels built or not, hooks, and a caller's mask and
    positions wherever the layer accepts them (``Attention.refusal`` says where it does not, with one line)."""
    score_mod, bias = layer.position.score_mod(), layer.position.score_bias()
    out = []
    for device, dtype, (t_q, t_k), available, mask, positions in itertools.product(
        ["cpu", "cuda"],
        [torch.float32, torch.float64, torch.bfloat16],
        [(64, 64), (1, 64), (3000, 3000)],
        [False, True],
        MASKS,
        [False, True],
    ):
        if layer.refusal(positions=positions, masked=mask is not None) is not None:
            continue
        call = layer.describe(
            device=device,
            dtype=dtype,
            t_q=t_q,
            t_k=t_k,
            score_mod=score_mod,
            bias=bias,
            mask=mask,
            positions=positions,
        )
        call = dispatch.with_triton(dispatch.with_kernels(call, available), available)
        out += [call, replace(call, wants_weights=True)]
    return out


@pytest.mark.parametrize("layer", [layer for _, layer in LAYERS], ids=[name for name, _ in LAYERS])
def test_no_rule_picks_a_path_that_cannot_serve_the_call(layer: torch.nn.Module) -> None:
    for call in calls_of(layer):
        choice = dispatch.choose(call)
        assert dispatch.PATHS[choice.path](call), f"{choice.rule} → {choice.path} cannot serve {call}"
        if call.wants_weights:  # the hook gets its weights: a path that computes them
            assert choice.path in ("reference", "heads", "normaliser", "position"), choice
        if call.mask is not None:  # the paths that take a caller's boolean mask
            assert choice.path in ("reference", "sdpa", "chunked", "flex", "heads"), choice
        if call.positions:  # the paths that call the score_mod (at the caller's positions)
            assert choice.path in ("reference", "chunked", "flex", "heads"), choice


def test_a_layer_runs_the_path_choose_names(monkeypatch: pytest.MonkeyPatch) -> None:
    """``run_path`` computes the chosen path itself: each path's output equals the reference's."""
    site = AttentionSite(d_model=32, n_heads=4, seq_len=64)
    cases = [
        (dict(position="alibi", backend="sdpa"), "sdpa_alibi"),
        (dict(position="t5", backend="sdpa"), "sdpa_relative"),
        (dict(normaliser="lssa", backend="chunked"), "chunked"),
        (dict(heads="sinks", heads_args={"n_sinks": 1}, position="alibi"), "heads_sdpa"),
    ]
    monkeypatch.setattr("attnlab.attention.fast.native.ENABLED", False)  # the PyTorch tiles, not the kernels
    for attention, path in cases:
        torch.manual_seed(0)
        fast = build_attention(AttentionConfig(**attention), site).double()
        slow = build_attention(AttentionConfig(**{**attention, "backend": "reference"}), site).double()
        slow.load_state_dict(fast.state_dict())
        assert fast.choose_path(t_q=12, dtype=torch.float64).path == path
        x = torch.randn(2, 12, 32, dtype=torch.float64)
        torch.testing.assert_close(fast(x), slow(x), atol=1e-10, rtol=1e-10)  # float64: exact up to rounding


def test_on_cuda_backend_auto_takes_triton_for_the_tiled_normalisers_sdpa_for_softmax_and_flex_for_score_mods() -> None:
    """What a real layer asks for on a CUDA device where triton runs (described here without one)."""
    site = AttentionSite(d_model=32, n_heads=4, seq_len=64)

    def path(**attention: object) -> str:
        layer = build_attention(AttentionConfig(**attention), site)
        call = layer.describe(
            device="cuda",
            dtype=torch.bfloat16,
            t_q=64,
            t_k=64,
            score_mod=layer.position.score_mod(),
            bias=layer.position.score_bias(),
        )
        return dispatch.choose(dispatch.with_triton(call, True)).path

    for name in ("sigmoid", "cog", "lssa", "lssar", "clipped_softmax"):
        assert path(normaliser=name) == "triton", name
        assert path(normaliser=name, window=8) == "triton", name
    assert path(normaliser="softmax") == "sdpa"
    assert path(normaliser="softmax", normaliser_args={"softcap": 30.0}) == "flex"  # no Triton kernel caps
    assert path(normaliser="softmax", position="t5") == "flex"
    assert path(normaliser="softmax", position="alibi") == "sdpa_alibi"
    assert path(normaliser="sigmoid", position="alibi") == "reference"  # a score_mod no kernel applies
    layer = build_attention(AttentionConfig(normaliser="sigmoid"), site)
    call = layer.describe(device="cuda", dtype=torch.bfloat16, t_q=64, t_k=64, score_mod=None, bias=None)
    assert dispatch.choose(dispatch.with_triton(call, False)).path == "reference"  # triton absent: as before
