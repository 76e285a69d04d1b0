"""``attnlab speed``: the speed and memory benchmark of ``attnlab.benchmarks.speed`` from the command line.

``speed_app`` is a Typer app of its own (one command, run by its callback); the main CLI mounts it with
``app.add_typer(speed_app, name="speed")``. ``python bench/speed.py`` runs the same thing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from attnlab.cli.guard import guarded
from attnlab.cli.options import int_list, output_folder

speed_app = typer.Typer(add_completion=False, help="Time and peak memory of every mechanism × backend vs SDPA.")


@speed_app.callback(invoke_without_command=True)
@guarded
def speed(
    out: Annotated[Path, typer.Option(help="folder for speed.json and the plots")] = Path("runs/speed"),
    quick: Annotated[bool, typer.Option(help="smoke test: T = 64, 128, five cases, one thread (seconds)")] = False,
    lengths: Annotated[str | None, typer.Option(help="comma-separated sequence lengths")] = None,
    case: Annotated[
        list[str] | None, typer.Option(help="a case (mechanism/backend) or a mechanism; repeatable; default all")
    ] = None,
    repeats: Annotated[int, typer.Option(help="timed repeats per case at T <= 2048")] = 5,
    long_repeats: Annotated[int, typer.Option(help="timed repeats per case at T > 2048")] = 3,
    dense_limit: Annotated[int, typer.Option(help="skip dense T×T cases above this T")] = 2048,
    threads: Annotated[int | None, typer.Option(help="torch threads (default: torch's)")] = None,
    device: Annotated[str, typer.Option(help="where the cases run: auto, cpu, cuda, cuda:N or mps")] = "cpu",
    memory: Annotated[bool, typer.Option(help="measure peak memory (one subprocess per case)")] = True,
    train: Annotated[bool, typer.Option(help="measure training throughput of a small TransformerLM")] = True,
    flex: Annotated[bool, typer.Option(help="include the compiled FlexAttention cases")] = True,
    xt: Annotated[bool, typer.Option(help="include x-transformers' cases (if installed)")] = True,
    db: Annotated[
        Path | None, typer.Option(help="also store the result in this results database (attnlab report shows it)")
    ] = None,
) -> None:
    """Check every case against the reference, then time it (interleaved) and measure its peak memory."""
    from attnlab.benchmarks.speed import run_speed
    from attnlab.runner.store import Store

    if db is not None:  # a database that cannot hold the result is refused before half an hour of timing
        Store(db).close()
    result = run_speed(
        output_folder("out", out),
        lengths=None if lengths is None else int_list("lengths", lengths),
        cases=case,
        repeats=repeats,
        long_repeats=long_repeats,
        dense_limit=dense_limit,
        memory=memory,
        train=train,
        flex=flex,
        xt=xt,
        quick=quick,
        threads=threads,
        device=device,
        echo=typer.echo,
    )
    if db is not None:
        with Store(db) as store:
            bench_id = store.add_speed(result.data)
        typer.echo(f"stored as benchmark {bench_id} in {db} (attnlab report {db} shows it)")
