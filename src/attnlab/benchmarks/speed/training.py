"""Training throughput of a small ``TransformerLM``: tokens/s and achieved GFLOP/s of AdamW steps.

fp32 or bf16 autocast, eager or ``torch.compile``, against the machine's fp32 and bf16 matmul GFLOP/s measured in
the same run; the fastest setting is named.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from attnlab.benchmarks.speed.cases import seeded
from attnlab.benchmarks.speed.timing import synchronize


def matmul_gflops(dtype: torch.dtype, n: int = 2048, repeats: int = 5, device: torch.device | None = None) -> float:
    """Achieved GFLOP/s of an n×n by n×n matmul in ``dtype`` on ``device`` (median of repeats): its practical peak."""
    device = device or torch.device("cpu")
    a, b = torch.randn(n, n).to(device, dtype), torch.randn(n, n).to(device, dtype)
    a @ b
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        synchronize(device)
        times.append(time.perf_counter() - start)
    return 2 * n**3 / statistics.median(times) / 1e9


def train_flops_per_token(model: torch.nn.Module, n_layers: int, d_model: int, t: int) -> float:
    """6 × (matmul weights) + 6 × L × (T + 1) × d_model: forward + backward FLOPs per token of a causal LM.

    Every weight of a Linear (the tied unembedding included) costs 2 FLOPs per token forward, 4 backward; the
    attention matmuls (q·k and weights·v) cost 4·d_model per visible key forward, (T + 1)/2 keys on average.
    """
    weights = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    return 6.0 * weights + 6.0 * n_layers * (t + 1) * d_model


def train_step(model: torch.nn.Module, opt: torch.optim.Optimizer, tokens: Tensor, bf16: bool) -> None:
    """One AdamW step of next-token prediction on ``tokens`` [B, T + 1] (autocast on the tokens' device)."""
    with torch.autocast(tokens.device.type, dtype=torch.bfloat16, enabled=bf16):
        logits = model(tokens[:, :-1])
    loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), tokens[:, 1:].flatten())
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def train_throughput(quick: bool, echo: Callable[[str], None], device: torch.device | None = None) -> dict[str, Any]:
    """Tokens/s and GFLOP/s of AdamW steps of a small TransformerLM on ``device``: fp32 / bf16 autocast × eager /
    compiled, against the device's matmul peak."""
    device = device or torch.device("cpu")
    from attnlab.model.config import ModelConfig
    from attnlab.model.transformer import TransformerLM

    if quick:
        shape = dict(vocab_size=64, d_model=32, n_layers=1, n_heads=2, max_seq_len=32)
        batch, steps, settings = 2, 2, [("fp32", False), ("bf16", False)]
    else:
        shape = dict(vocab_size=256, d_model=256, n_layers=4, n_heads=4, max_seq_len=256)
        batch, steps = 16, 10
        settings = [("fp32", False), ("bf16", False), ("fp32", True), ("bf16", True)]
    cfg = ModelConfig(**shape, attention={"position": "rope"})
    t = cfg.max_seq_len
    n = 256 if quick else 2048
    peaks = {
        "fp32": matmul_gflops(torch.float32, n, device=device),
        "bf16": matmul_gflops(torch.bfloat16, n, device=device),
    }
    results = []
    for precision, compiled in settings:
        model = seeded(lambda: TransformerLM(cfg)).to(device)
        flops = train_flops_per_token(model, cfg.n_layers, cfg.d_model, t)
        step_model = torch.compile(model) if compiled else model
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        tokens = torch.randint(0, cfg.vocab_size, (batch, t + 1), generator=torch.Generator().manual_seed(0)).to(device)

        start = time.perf_counter()
        for _ in range(2):  # warm-up (and compilation: from inductor's on-disk cache when it holds this graph)
            train_step(step_model, opt, tokens, precision == "bf16")
        synchronize(device)
        warmup = time.perf_counter() - start
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            train_step(step_model, opt, tokens, precision == "bf16")
            synchronize(device)
            times.append(time.perf_counter() - start)
        tok_s = batch * t / statistics.median(times)
        gflops = tok_s * flops / 1e9
        results.append(
            {
                "precision": precision,
                "compiled": compiled,
                "tokens_per_s": tok_s,
                "gflops": gflops,
                "fraction_of_matmul_peak": gflops / peaks[precision],
                "warmup_s": warmup,
                "step_s": statistics.median(times),
            }
        )
        echo(f"  train {precision}{' compiled' if compiled else ''}: {tok_s:,.0f} tokens/s")
    best = max(results, key=lambda r: r["tokens_per_s"])
    return {
        "model": {**shape, "batch": batch, "params": sum(p.numel() for p in model.parameters())},
        "flops_per_token": flops,
        "matmul_peak_gflops": peaks,
        "settings": results,
        "fastest": {"precision": best["precision"], "compiled": best["compiled"]},
    }
