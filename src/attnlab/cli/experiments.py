"""Command-line front ends of the paper experiments: ``kv-eviction``, ``rope-scaling`` and ``sinks``.

``experiments_app`` is a ``typer.Typer`` the main CLI mounts; the logic lives in ``attnlab.experiments``
(``kv_eviction``, ``rope_scaling``, ``sinks``). Bad input exits with status 2 and one line
``error: field=value: problem (allowed: ...)``.
"""

from __future__ import annotations

import time
from typing import Annotated, Any

import typer
from rich.table import Table

from attnlab.cli.console import console
from attnlab.cli.guard import guard as _guard
from attnlab.cli.options import int_list as _ints
from attnlab.errors import ConfigError

experiments_app = typer.Typer(add_completion=False, no_args_is_help=True, help="Lens experiments on real text.")


def _names(field: str, text: str, allowed: Any) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    for name in names or [text]:
        if name not in allowed:
            raise ConfigError(field, name, "unknown name", list(allowed))
    return names


def _threads(n: int | None) -> None:
    if n is not None:
        if n < 1:
            raise ConfigError("threads", n, "must be at least 1")
        import torch

        torch.set_num_threads(n)


def _smollm2() -> tuple[Any, Any]:
    from attnlab.lens.pretrained.smollm2 import load_smollm2

    try:
        return load_smollm2()
    except (FileNotFoundError, ImportError) as err:
        raise ConfigError("model", "smollm2", f"cannot load: {err}") from None


Threads = Annotated[int | None, typer.Option(help="torch threads (default: torch's choice)")]


@experiments_app.command("kv-eviction")
def kv_eviction(
    n_tokens: Annotated[int, typer.Option(help="tokens of pydoc_data.topics text to decode")] = 1024,
    budgets: Annotated[str, typer.Option(help="cache budgets, comma-separated")] = "64,128,256",
    policies: Annotated[str, typer.Option(help="streaming, h2o, recent")] = "streaming,h2o,recent",
    chunk: Annotated[int, typer.Option(help="tokens per forward call (1 = token by token)")] = 16,
    n_sink: Annotated[int, typer.Option(help="streaming: first tokens always kept")] = 4,
    n_recent: Annotated[int | None, typer.Option(help="h2o recent window (default: half the budget)")] = None,
    positions: Annotated[str, typer.Option(help="cache (StreamingLLM) or original")] = "cache",
    offset: Annotated[int, typer.Option(help="character offset into the text")] = 0,
    threads: Threads = None,
) -> None:
    """Perplexity of SmolLM2 vs KV-cache budget for StreamingLLM, H2O and a recent window."""

    def go() -> None:
        from attnlab.experiments.kv_eviction import POLICIES, EvictionConfig, eviction_table
        from attnlab.experiments.text import text_tokens

        sizes, chosen = _ints("budgets", budgets), _names("policies", policies, POLICIES)
        for b in sizes:  # every (policy, budget) is validated before the model loads
            for p in chosen:
                EvictionConfig(policy=p, budget=b, n_sink=n_sink, n_recent=n_recent, positions=positions)
        if chunk < 1:
            raise ConfigError("chunk", chunk, "must be at least 1")
        _threads(threads)
        model, tok = _smollm2()
        tokens = text_tokens(tok, n_tokens, offset)
        t0 = time.perf_counter()
        rows = eviction_table(
            model, tokens, sizes, chosen, chunk=chunk, n_sink=n_sink, n_recent=n_recent, positions=positions
        )
        title = f"SmolLM2-135M, {n_tokens} tokens, chunks of {chunk}, positions={positions}"
        table = Table(title=title, title_justify="left")
        for col in ("policy", "budget", "ppl", "ppl after budget", "s"):
            table.add_column(col, justify="left" if col == "policy" else "right")
        for r in rows:
            budget = "full" if r.budget is None else str(r.budget)
            table.add_row(
                r.policy, budget, f"{r.perplexity:.3f}", f"{r.perplexity_after_budget:.3f}", f"{r.seconds:.0f}"
            )
        console.print(table)
        console.print(f"total {time.perf_counter() - t0:.0f} s")

    _guard(go)


@experiments_app.command("rope-scaling")
def rope_scaling(
    lengths: Annotated[str, typer.Option(help="context lengths, comma-separated")] = "2048,4096,8192,16384",
    methods: Annotated[str, typer.Option(help="METHOD:FACTOR list (none, pi, ntk, yarn, abf, eabf)")] = (
        "none,pi:2,ntk:2,yarn:2,abf:50"
    ),
    offset: Annotated[int, typer.Option(help="character offset into the text")] = 0,
    threads: Threads = None,
) -> None:
    """Perplexity of SmolLM2 vs context length with RoPE scaling (PI, NTK, YaRN, ABF), no fine-tuning."""

    def go() -> None:
        from attnlab.experiments.rope_scaling import parse_methods, rope_scaling_table
        from attnlab.experiments.text import text_tokens

        sizes, chosen = _ints("lengths", lengths), parse_methods(methods)
        if min(sizes) < 4:
            raise ConfigError("lengths", lengths, "every length must be at least 4")
        _threads(threads)
        model, tok = _smollm2()
        tokens = text_tokens(tok, max(sizes), offset)
        t0 = time.perf_counter()
        rows = rope_scaling_table(model, tokens, chosen, sizes)
        title = f"SmolLM2-135M (trained at {model.spec.context_length} tokens, RoPE base {model.spec.rope_base:g})"
        table = Table(title=title, title_justify="left")
        for col in ("method", "factor", "length", "ppl", "ppl 2nd half", "pass s"):
            table.add_column(col, justify="left" if col == "method" else "right")
        for r in rows:
            table.add_row(
                r.method,
                f"{r.factor:g}",
                str(r.length),
                f"{r.perplexity:.3f}",
                f"{r.perplexity_second_half:.3f}",
                f"{r.seconds:.0f}",
            )
        console.print(table)
        console.print(f"total {time.perf_counter() - t0:.0f} s")

    _guard(go)


@experiments_app.command("sinks")
def sinks(
    steps: Annotated[int, typer.Option(help="training steps per variant")] = 1000,
    variants: Annotated[str, typer.Option(help="softmax, sigmoid (bias −log n), sigmoid_b0 (no bias)")] = (
        "softmax,sigmoid,sigmoid_b0"
    ),
    d_model: Annotated[int, typer.Option(help="model width")] = 64,
    n_layers: Annotated[int, typer.Option(help="layers")] = 4,
    n_heads: Annotated[int, typer.Option(help="heads")] = 4,
    seq_len: Annotated[int, typer.Option(help="training and evaluation length T")] = 64,
    batch_size: Annotated[int, typer.Option(help="windows per step")] = 16,
    lr: Annotated[float, typer.Option(help="peak learning rate")] = 2e-3,
    weight_decay: Annotated[float, typer.Option(help="AdamW weight decay")] = 0.1,
    eps: Annotated[float, typer.Option(help="sink threshold ε")] = 0.3,
    seed: Annotated[int, typer.Option(help="seed of weights and batches")] = 0,
    text_chars: Annotated[int | None, typer.Option(help="use only this many characters of text")] = None,
    threads: Threads = None,
) -> None:
    """Train the same byte-level LM with softmax and with sigmoid attention; print first-token sink rates."""

    def go() -> None:
        from attnlab.experiments.sinks import VARIANTS, SinksConfig, run_sinks_experiment

        chosen = _names("variants", variants, VARIANTS)
        cfg = SinksConfig(
            steps=steps,
            d_model=d_model,
            n_layers=n_layers,
            n_heads=n_heads,
            seq_len=seq_len,
            batch_size=batch_size,
            lr=lr,
            weight_decay=weight_decay,
            eps=eps,
            seed=seed,
            text_chars=text_chars,
        )
        _threads(threads)
        results = run_sinks_experiment(cfg, chosen)
        title = (
            f"byte LM d={d_model} L={n_layers} H={n_heads}, {steps} steps of {batch_size}×{seq_len} bytes, "
            f"held-out T={seq_len}, ε={eps}"
        )
        table = Table(title=title, title_justify="left")
        for col in ("variant", "bias", "train loss", "val loss", "Sink₀ (proxy)", "Sink₀ (raw)", "mean α₀", "s"):
            table.add_column(col, justify="left" if col == "variant" else "right")
        for r in results:
            table.add_row(
                r.variant,
                "-" if r.bias is None else f"{r.bias:.3f}",
                f"{r.train_loss:.3f}",
                f"{r.val_loss:.3f}",
                f"{100 * r.sink_rate:.2f}%",
                f"{100 * r.sink_rate_raw:.2f}%",
                f"{r.alpha0:.3f}",
                f"{r.seconds:.0f}",
            )
        console.print(table)
        uniform = sum(1 / (i + 1) for i in range(seq_len)) / seq_len
        console.print(f"(uniform causal attention would give α₀ = H_T / T = {uniform:.3f})")

    _guard(go)
