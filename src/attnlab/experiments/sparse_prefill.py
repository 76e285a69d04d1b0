"""Sparse prefill on SmolLM2: perplexity on real text against the attention time of prefill, per pattern.

For every context length L (tokens of the standard library's reference manual, ``experiments.text``):

1. **Dense pass.** One forward pass with the hooks of ``attnlab.longctx.prefill.apply`` computing dense causal SDPA
   (the model's own computation) and keeping every layer's rotated q, k and v: the dense perplexity and the inputs
   of the timing.
2. **Timing, on those tensors.** In one run, for ``repeats`` rounds, every method in turn over all layers: dense
   ``F.scaled_dot_product_attention`` (causal, GQA), and each pattern's index estimation (``build``) then its
   block-sparse kernel, after one untimed call of each (the compiled kernel is built on first use). A method's
   time is the median over rounds of its all-layer sum; the table shows the kernel and the estimation apart and
   the speed-up of both together. Threads are whatever the caller fixed.
3. **Perplexity under each pattern.** One forward pass per pattern with its output replacing every layer's
   attention (exact: later layers see the sparse outputs), layouts estimated from that pass's own q and k.

Beyond the model's training length (8192 for SmolLM2-135M) plain RoPE loses the text (README: perplexity 27.9 at
16k against 10.1 with YaRN ×2), so ``rope="auto"`` rebuilds the attention with YaRN at s = L / 8192 for those
lengths (``rope_scaling``), for every pattern alike; ``rope="none"`` keeps plain RoPE.

``minference`` first runs MInference's offline search (``longctx.prefill.search``) on a calibration text (another
part of the manual, ``calib_tokens`` tokens, plain RoPE) and then uses the chosen head type per head.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from attnlab.attention.fast.block_sparse import block_sparse_attention
from attnlab.errors import ConfigError
from attnlab.experiments.rope_scaling import token_nll
from attnlab.experiments.text import text_tokens
from attnlab.longctx.prefill.apply import attention_layers, dense_causal, layer_scale, sparse_prefill
from attnlab.longctx.prefill.patterns import PATTERNS, PatternSpec
from attnlab.longctx.prefill.search import search_layer

ROPES = ("auto", "none")
CALIB_OFFSET = 200_000  # characters into the manual: the calibration text shares nothing with the evaluated one


@dataclass(frozen=True)
class PrefillRow:
    """One (length, pattern, budget): its computed fraction, attention time against dense, perplexity."""

    length: int
    pattern: str
    keys: int  # key budget per query besides its own block (0 for dense)
    density: float  # computed tiles over causal tiles, mean over layers (timing run)
    dense_s: float  # dense SDPA, all layers, median over rounds
    kernel_s: float  # the pattern's block-sparse kernel, all layers
    build_s: float  # its index estimation, all layers
    speedup: float  # dense_s / (kernel_s + build_s)
    perplexity: float
    ppl_ratio: float  # perplexity / the dense perplexity at this length
    rope: str


Plan = dict[int, PatternSpec]  # layer → spec


def parse_patterns(text: str) -> list[str]:
    names = [p.strip() for p in text.split(",") if p.strip()]
    if not names:
        raise ConfigError("patterns", text, "no pattern given", PATTERNS)
    for name in names:
        if name not in PATTERNS:
            raise ConfigError("patterns", name, "unknown sparse prefill pattern", PATTERNS)
    return names


def set_rope(model: Any, length: int, rope: str) -> str:
    """YaRN at s = length / training length beyond it (``rope="auto"``), else plain RoPE; returns the label."""
    from attnlab.lens.pretrained.smollm2 import with_position

    if rope not in ROPES:
        raise ConfigError("rope", rope, "unknown RoPE choice", ROPES)
    train = model.spec.context_length
    if rope == "auto" and length > train:
        with_position(model, "yarn", {"scale": length / train})
        return f"yarn:{length / train:g}"
    with_position(model, "rope")
    return "rope"


def dense_pass(model: Any, tokens: Tensor) -> tuple[float, dict[int, tuple[Tensor, Tensor, Tensor]]]:
    """(perplexity, {layer: (q [H,T,D], k, v [Hkv,T,D])}) of one dense pass."""
    with sparse_prefill(model, lambda *_: None, keep_qkv=True) as record:
        nll = token_nll(model, tokens)
    qkv = {layer: (q[0], k[0], v[0]) for layer, (q, k, v) in record.qkv.items()}
    return math.exp(float(nll.mean())), qkv


def pattern_pass(model: Any, tokens: Tensor, plan: Plan) -> tuple[float, float]:
    """(perplexity, mean density over layers) of one pass with every layer under ``plan``."""
    with sparse_prefill(model, lambda layer, q, k, s: plan[layer].build(q, k, s)) as record:
        nll = token_nll(model, tokens)
    densities = [d for values in record.density.values() for d in values]
    return math.exp(float(nll.mean())), statistics.fmean(densities)


def time_methods(
    qkv: dict[int, tuple[Tensor, Tensor, Tensor]], scales: dict[int, float], plans: dict[str, Plan], repeats: int
) -> dict[str, tuple[float, float, float, float]]:
    """{label: (dense s, kernel s, build s, density)}: medians over ``repeats`` rounds of all-layer sums; dense SDPA
    and every plan run in turn within each round, on the same tensors, after one untimed call of each on the first
    layer (the first call of the compiled kernel builds or loads it)."""
    dense_runs: list[float] = []
    runs: dict[str, list[tuple[float, float]]] = {label: [] for label in plans}
    density: dict[str, float] = {}
    first, (q0, k0, v0) = next(iter(qkv.items()))  # untimed: the compiled kernel is built (or loaded) on first use
    dense_causal(q0, k0, v0, scales[first])
    for plan in plans.values():
        block_sparse_attention(q0, k0, v0, plan[first].build(q0, k0, scales[first]), scale=scales[first])
    for _ in range(repeats):
        t0 = time.perf_counter()
        for layer, (q, k, v) in qkv.items():
            dense_causal(q, k, v, scales[layer])
        dense_runs.append(time.perf_counter() - t0)
        for label, plan in plans.items():
            kernel = build = 0.0
            dens = []
            for layer, (q, k, v) in qkv.items():
                t0 = time.perf_counter()
                layout = plan[layer].build(q, k, scales[layer])
                t1 = time.perf_counter()
                assert layout is not None
                block_sparse_attention(q, k, v, layout, scale=scales[layer])
                kernel += time.perf_counter() - t1
                build += t1 - t0
                dens.append(layout.density())
            runs[label].append((kernel, build))
            density[label] = statistics.fmean(dens)
    dense = statistics.median(dense_runs)
    out = {}
    for label, values in runs.items():
        kernel = statistics.median(v[0] for v in values)
        build = statistics.median(v[1] for v in values)
        out[label] = (dense, kernel, build, density[label])
    return out


def search_plan(model: Any, tokenizer: Any, keys: int, calib_tokens: int, block: int) -> Plan:
    """MInference's offline search on a calibration text: the ``minference`` spec of every layer."""
    set_rope(model, calib_tokens, "none")
    tokens = text_tokens(tokenizer, calib_tokens, CALIB_OFFSET)
    _, qkv = dense_pass(model, tokens)
    layers = attention_layers(model)
    plan = {}
    for layer, (q, k, _) in qkv.items():
        heads, _ = search_layer(q, k, keys, block, layer_scale(layers[layer][1], q.shape[-1]))
        plan[layer] = PatternSpec("minference", keys, block, heads)
    return plan


def prefill_table(
    model: Any,
    tokenizer: Any,
    lengths: Sequence[int],
    patterns: Sequence[str],
    budgets: Sequence[int],
    *,
    repeats: int = 3,
    offset: int = 0,
    rope: str = "auto",
    calib_tokens: int = 4096,
    block: int = 64,
    log: Callable[[str], None] = print,
) -> list[PrefillRow]:
    """Every (length, pattern, budget) row; ``dense`` gives one row per length."""
    if repeats < 1:
        raise ConfigError("repeats", repeats, "must be at least 1")
    for b in budgets:
        PatternSpec("a-shape", b, block)  # validates the budget
    layers = attention_layers(model)
    searched: dict[int, Plan] = {}
    if "minference" in patterns:
        for b in budgets:
            log(f"search: MInference's per-head pattern search at {b} keys on {calib_tokens} calibration tokens")
            searched[b] = search_plan(model, tokenizer, b, calib_tokens, block)
    rows: list[PrefillRow] = []
    try:
        for length in lengths:
            label = set_rope(model, length, rope)
            tokens = text_tokens(tokenizer, length, offset)
            t0 = time.perf_counter()
            dense_ppl, qkv = dense_pass(model, tokens)
            log(f"{length}: dense pass {time.perf_counter() - t0:.0f} s, perplexity {dense_ppl:.3f}")
            scales = {layer: layer_scale(layers[layer][1], q.shape[-1]) for layer, (q, _, _) in qkv.items()}
            plans: dict[str, Plan] = {}
            for name in patterns:
                if name == "dense":
                    continue
                for b in budgets:
                    if name == "minference":
                        plans[f"{name}@{b}"] = searched[b]
                    else:
                        plans[f"{name}@{b}"] = {layer: PatternSpec(name, b, block) for layer in qkv}
            t0 = time.perf_counter()
            timed = time_methods(qkv, scales, plans, repeats) if plans else {}
            log(f"{length}: timing {time.perf_counter() - t0:.0f} s")
            del qkv
            dense_s = next(iter(timed.values()))[0] if timed else float("nan")
            if "dense" in patterns:
                rows.append(PrefillRow(length, "dense", 0, 1.0, dense_s, dense_s, 0.0, 1.0, dense_ppl, 1.0, label))
            for plan_label, plan in plans.items():
                t0 = time.perf_counter()
                ppl, _ = pattern_pass(model, tokens, plan)
                dense_t, kernel, build, density = timed[plan_label]
                name, _, b = plan_label.partition("@")
                rows.append(
                    PrefillRow(
                        length,
                        name,
                        int(b),
                        density,
                        dense_t,
                        kernel,
                        build,
                        dense_t / (kernel + build),
                        ppl,
                        ppl / dense_ppl,
                        label,
                    )
                )
                log(f"{length}: {plan_label} pass {time.perf_counter() - t0:.0f} s, perplexity {ppl:.3f}")
    finally:
        set_rope(model, 0, "none")
    return rows


# --------------------------------------------------------------------------------------------------- output
COLUMNS = ("length", "pattern", "keys", "computed", "dense s", "kernel s", "build s", "speed-up", "ppl", "ppl / dense")


def row_cells(r: PrefillRow) -> list[str]:
    return [
        str(r.length),
        r.pattern,
        "-" if r.pattern == "dense" else str(r.keys),
        f"{100 * r.density:.1f}%",
        f"{r.dense_s:.3f}",
        f"{r.kernel_s:.3f}",
        f"{r.build_s:.3f}",
        f"{r.speedup:.2f}×",
        f"{r.perplexity:.3f}",
        f"{r.ppl_ratio:.4f}",
    ]


def markdown_table(rows: Sequence[PrefillRow]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(row_cells(r)) + " |" for r in rows]
    return "\n".join(lines) + "\n"
