"""``attnlab longctx kv smollm2``: KV-cache policies on SmolLM2, perplexity and passkey against compression ratio.

The experiment is ``attnlab.experiments.longctx_kv``; this module parses, validates (every bad value is one line
through the CLI guard, before the model loads), runs it and writes ``kv.md``, ``kv.csv`` and the plots to ``--out``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from attnlab.cli.console import console
from attnlab.cli.guard import guard
from attnlab.cli.options import float_list, int_list, output_folder
from attnlab.errors import ConfigError

MODELS = ("smollm2",)
ALL = "streaming,h2o,recent,snapkv,pyramidkv,tova,taskkv,recycled"


def kv(
    model: Annotated[str, typer.Argument(help="the pretrained model (smollm2)")],
    lengths: Annotated[str, typer.Option(help="prompt lengths in tokens, comma-separated")] = "2048,4096",
    ratios: Annotated[str, typer.Option(help="compression ratios (fraction of the prompt's KV pairs removed)")] = (
        "0.25,0.5,0.75"
    ),
    policies: Annotated[str, typer.Option(help=f"KV-cache policies ({ALL})")] = ALL,
    tasks: Annotated[str, typer.Option(help="ppl, passkey")] = "ppl,passkey",
    out: Annotated[Path, typer.Option(help="folder for kv.md, kv.csv and the plots")] = Path("runs/longctx_kv"),
    samples: Annotated[int, typer.Option(help="ppl: texts per length")] = 1,
    continuation: Annotated[int, typer.Option(help="ppl: tokens scored after the prompt")] = 256,
    chunk: Annotated[int, typer.Option(help="ppl: tokens per decoding call (1 = token by token)")] = 16,
    depths: Annotated[str, typer.Option(help="passkey: needle depths in [0, 1]")] = "0,0.25,0.5,0.75,1",
    positions: Annotated[str, typer.Option(help="original (kvpress) or cache (StreamingLLM's re-numbering)")] = (
        "original"
    ),
    stride: Annotated[int, typer.Option(help="recycled: a full attention step every STRIDE calls")] = 8,
    window: Annotated[int, typer.Option(help="snapkv, pyramidkv, taskkv: observation window")] = 32,
    rope: Annotated[str, typer.Option(help="RoPE scaling METHOD:FACTOR for contexts past 8192 (e.g. yarn:2)")] = "none",
    device: Annotated[str, typer.Option(help="cpu or cuda")] = "cpu",
    seed: Annotated[int, typer.Option(help="passkey: seed of the keys")] = 0,
    threads: Annotated[int | None, typer.Option(help="torch threads (default: torch's choice)")] = None,
) -> None:
    """Perplexity and passkey accuracy of SmolLM2 under every KV-cache policy and compression ratio."""

    def go() -> None:
        from attnlab.cli.longctx_outputs import write_kv_outputs as write_outputs
        from attnlab.experiments.longctx_kv import check, longctx_kv_table, markdown_tables
        from attnlab.experiments.rope_scaling import parse_methods, scaled_position

        if model not in MODELS:
            raise ConfigError("model", model, "unknown model", MODELS)
        sizes, fractions = int_list("lengths", lengths), float_list("ratios", ratios)
        names = [p.strip() for p in policies.split(",") if p.strip()]
        chosen_tasks = [t.strip() for t in tasks.split(",") if t.strip()]
        check(names, fractions, chosen_tasks)
        places = float_list("depths", depths)
        for d in places:
            if not 0 <= d <= 1:
                raise ConfigError("depths", d, "a depth is a fraction of the haystack", "0 … 1")
        if positions not in ("original", "cache"):
            raise ConfigError("positions", positions, "unknown position scheme", ["original", "cache"])
        if positions == "cache" and "recycled" in names:
            raise ConfigError("positions", positions, "recycled keeps the tokens' own positions", ["original"])
        for field, value, low in (("samples", samples, 1), ("continuation", continuation, 2), ("chunk", chunk, 1)):
            if value < low:
                raise ConfigError(field, value, f"must be at least {low}")
        if stride < 1 or window < 1:
            raise ConfigError("stride / window", (stride, window), "must be at least 1")
        if device not in ("cpu", "cuda"):
            raise ConfigError("device", device, "unknown device", ["cpu", "cuda"])
        scalings = parse_methods(rope)
        if len(scalings) != 1:
            raise ConfigError("rope", rope, "give one RoPE scaling", "none, or METHOD:FACTOR such as yarn:2")
        ((method, factor),) = scalings
        output_folder("out", out)
        import torch

        if device == "cuda" and not torch.cuda.is_available():
            raise ConfigError("device", device, "no CUDA device here", ["cpu"])
        if threads is not None:
            if threads < 1:
                raise ConfigError("threads", threads, "must be at least 1")
            torch.set_num_threads(threads)
        from attnlab.lens.pretrained.smollm2 import load_smollm2, with_position

        try:
            lm, tokenizer = load_smollm2()
        except (FileNotFoundError, ImportError) as err:
            raise ConfigError("model", model, f"cannot load: {err}") from None
        if method != "none":
            position, args = scaled_position(method, factor, lm.spec.rope_base)
            with_position(lm, position, args)
        lm = lm.to(device)
        params = {name: {"window": window} for name in ("snapkv", "pyramidkv", "taskkv")}
        params["recycled"] = {"stride": stride}
        t0 = time.perf_counter()
        rows = longctx_kv_table(
            lm,
            tokenizer,
            sizes,
            fractions,
            names,
            tasks=chosen_tasks,
            positions=positions,
            samples=samples,
            continuation=continuation,
            chunk=chunk,
            depths=places,
            seed=seed,
            params=params,
            log=lambda line: console.print(line, highlight=False, markup=False),
        )
        paths = write_outputs(rows, out)
        rope_text = "" if method == "none" else f", RoPE {method} ×{factor:g}"
        console.print(f"SmolLM2-135M on {device}{rope_text}, positions={positions}", highlight=False)
        console.print(markdown_tables(rows), highlight=False, markup=False)
        console.print(f"wrote {', '.join(str(p) for p in paths)}", highlight=False)
        console.print(f"total {time.perf_counter() - t0:.0f} s", highlight=False)

    guard(go)
