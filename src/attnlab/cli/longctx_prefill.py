"""``attnlab longctx prefill``: sparse prefill patterns on SmolLM2, perplexity against attention time.

The logic lives in ``attnlab.experiments.sparse_prefill`` (and the patterns in ``attnlab.longctx.prefill``); this
module parses and checks the options, prints the table and writes ``prefill.csv``, ``prefill.md`` and
``prefill.png`` into ``--out``. Bad input exits with status 2 and one line
``error: field=value: problem (allowed: ...)``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from attnlab.cli.console import console
from attnlab.cli.guard import guard
from attnlab.cli.options import int_list, output_folder
from attnlab.errors import ConfigError

MODELS = ("smollm2",)


def prefill(
    model: Annotated[str, typer.Argument(help="the model (smollm2)")] = "smollm2",
    lengths: Annotated[str, typer.Option(help="context lengths, comma-separated")] = "2048,4096,8192,16384",
    patterns: Annotated[str, typer.Option(help="dense, a-shape, vertical-slash, block-topk, hip, minference")] = (
        "dense,a-shape,vertical-slash,block-topk,hip"
    ),
    keys: Annotated[str, typer.Option(help="key budgets per query (besides its own block), comma-separated")] = "1024",
    repeats: Annotated[int, typer.Option(help="timing rounds (the median is reported)")] = 3,
    rope: Annotated[str, typer.Option(help="auto: YaRN beyond the training length; none: plain RoPE")] = "auto",
    offset: Annotated[int, typer.Option(help="character offset into the text")] = 0,
    calib_tokens: Annotated[int, typer.Option(help="minference: tokens of the calibration text")] = 4096,
    threads: Annotated[int | None, typer.Option(help="torch threads (fix them for timing)")] = None,
    out: Annotated[Path | None, typer.Option(help="folder for prefill.csv, prefill.md, prefill.png")] = None,
) -> None:
    """Perplexity and attention time of SmolLM2's prefill under sparse patterns (MInference, HiP) vs dense SDPA."""

    def go() -> None:
        from attnlab.cli.longctx_outputs import write_prefill_outputs as write_outputs
        from attnlab.experiments.sparse_prefill import ROPES, parse_patterns, prefill_table

        if model not in MODELS:
            raise ConfigError("model", model, "unknown model", MODELS)
        sizes, budgets, chosen = int_list("lengths", lengths), int_list("keys", keys), parse_patterns(patterns)
        if min(sizes) < 128:
            raise ConfigError("lengths", lengths, "every length must be at least 128")
        from attnlab.longctx.prefill.patterns import PatternSpec

        for b in budgets:
            PatternSpec("a-shape", b)  # the budget's own check
        if repeats < 1:
            raise ConfigError("repeats", repeats, "must be at least 1")
        if rope not in ROPES:
            raise ConfigError("rope", rope, "unknown RoPE choice", ROPES)
        if calib_tokens < 256:
            raise ConfigError("calib-tokens", calib_tokens, "must be at least 256")
        folder = output_folder("out", out)
        if threads is not None:
            if threads < 1:
                raise ConfigError("threads", threads, "must be at least 1")
            import torch

            torch.set_num_threads(threads)
        from attnlab.lens.pretrained.smollm2 import load_smollm2

        try:
            lm, tok = load_smollm2()
        except (FileNotFoundError, ImportError) as err:
            raise ConfigError("model", model, f"cannot load: {err}") from None
        import torch

        t0 = time.perf_counter()
        rows = prefill_table(
            lm,
            tok,
            sizes,
            chosen,
            budgets,
            repeats=repeats,
            offset=offset,
            rope=rope,
            calib_tokens=calib_tokens,
            log=lambda line: console.print(line, highlight=False),
        )
        title = f"SmolLM2-135M sparse prefill, {torch.get_num_threads()} threads, {repeats} timing rounds (median)"
        table = Table(title=title, title_justify="left")
        from attnlab.experiments.sparse_prefill import COLUMNS, row_cells

        for col in COLUMNS:
            table.add_column(col, justify="left" if col == "pattern" else "right")
        for r in rows:
            table.add_row(*row_cells(r))
        console.print(table)
        if folder is not None:
            for path in write_outputs(rows, folder, f"# {title}"):
                console.print(f"wrote {path}", highlight=False)
        console.print(f"total {time.perf_counter() - t0:.0f} s")

    guard(go)
