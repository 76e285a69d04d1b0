"""The ``attnlab`` command line: ``zoo``, ``run``, ``demo``, ``leaderboard``."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from attnlab.errors import ConfigError
from attnlab.report.tables import md_cell

app = typer.Typer(add_completion=False, no_args_is_help=True, help="attnlab: a laboratory for attention mechanisms.")
console = Console(width=None if sys.stdout.isatty() else 140)

CAPABILITY_COLUMNS = ("causal", "non_causal", "cross", "kv_cache", "row_stochastic", "signed")


def _mark(value: bool) -> str:
    return "[green]yes[/green]" if value else "[dim]-[/dim]"


def zoo_markdown() -> str:
    """The compatibility table of every registry entry, as markdown (the README's table is this output)."""
    from attnlab.attention import HEADS, NORMALISERS
    from attnlab.attention.linear.feature_maps import FEATURE_MAPS
    from attnlab.position import POSITIONS

    header = ["axis", "name", *(c.replace("_", "-") for c in CAPABILITY_COLUMNS), "backends", "summary", "paper"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for axis, registry in (("normaliser", NORMALISERS), ("heads", HEADS), ("position", POSITIONS)):
        for e in registry.entries():
            caps = e.capabilities
            marks = ["✓" if getattr(caps, c) else "–" for c in CAPABILITY_COLUMNS]
            cells = [axis, f"`{e.name}`", *marks, ", ".join(caps.backends), e.summary, e.paper]
            lines.append("| " + " | ".join(md_cell(c) for c in cells) + " |")
    lines += ["", "Feature maps φ of the kernel-attention normalisers:", "", "| feature map | summary | paper |"]
    lines.append("|---|---|---|")
    lines += [f"| `{e.name}` | {md_cell(e.summary)} | {md_cell(e.paper)} |" for e in FEATURE_MAPS.entries()]
    return "\n".join(lines)


@app.command()
def zoo(markdown: Annotated[bool, typer.Option(help="print a markdown table instead")] = False) -> None:
    """List every registered mechanism and position encoding with its capabilities."""
    from attnlab.attention import HEADS, NORMALISERS
    from attnlab.position import POSITIONS

    if markdown:
        print(zoo_markdown())
        return
    for title, registry in (("normalisers", NORMALISERS), ("heads", HEADS), ("positions", POSITIONS)):
        table = Table(title=f"{title} ({len(registry)})", title_justify="left")
        table.add_column("name", style="bold")
        for col in CAPABILITY_COLUMNS:
            table.add_column(col.replace("_", "-"))
        table.add_column("backends")
        table.add_column("paper")
        for e in registry.entries():
            caps = e.capabilities
            table.add_row(
                e.name,
                *(_mark(getattr(caps, c)) for c in CAPABILITY_COLUMNS),
                ", ".join(caps.backends),
                e.paper,
            )
        console.print(table)
    from attnlab.attention.linear.feature_maps import FEATURE_MAPS

    table = Table(title=f"feature maps ({len(FEATURE_MAPS)})", title_justify="left")
    for col in ("name", "summary", "paper"):
        table.add_column(col)
    for e in FEATURE_MAPS.entries():
        table.add_row(e.name, e.summary, e.paper)
    console.print(table)
    total = sum(len(r) for r in (NORMALISERS, HEADS, POSITIONS, FEATURE_MAPS))
    console.print(f"{total} entries; docs: docs/zoo/README.md, compatibility: docs/compatibility.md")


def _run(sweep_name: str, db: Path, workers: int | None, threads: int | None, report_dir: Path | None) -> None:
    from attnlab.report.markdown import write_report
    from attnlab.runner.local import plan_workers, run_local
    from attnlab.runner.store import Store
    from attnlab.sweeps import load_sweep

    sweep = load_sweep(sweep_name)
    runs = sweep.runs()
    with Store(db) as store:
        store.enqueue(runs)
        todo = sum(store.status(r.run_id) != "done" for r in runs)
        n_workers, n_threads = plan_workers(max(todo, 1), workers, threads)
        console.print(
            f"sweep [bold]{sweep.name}[/bold]: {len(runs)} runs, {len(runs) - todo} already done; "
            f"{n_workers if workers != 0 else 'in-process'} worker(s) × {n_threads} thread(s); database {db}"
        )
        t0 = time.perf_counter()
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, console=console) as progress:
            bar = progress.add_task(f"{sweep.name}", total=len(runs), completed=len(runs) - todo)

            def on_done(run, outcome) -> None:
                acc = outcome.final.get("accuracy")
                result = f"accuracy {acc:.3f}" if outcome.ok else f"[red]failed[/red]: {outcome.error.splitlines()[0]}"
                progress.console.print(
                    f"  {run.task.name} {run.mechanism} / {run.position} d{run.model.d_model} lr {run.train.lr:g} "
                    f"seed {run.seed}: {result} ({outcome.wall_s:.0f} s)"
                )
                progress.advance(bar)

            summary = run_local(runs, store, workers=workers, threads=n_threads, on_done=on_done)
        console.print(
            f"finished in {time.perf_counter() - t0:.0f} s: {summary.done} done, {summary.failed} failed, "
            f"{summary.skipped} skipped (already done)"
        )
        _print_leaderboard(store, sweep.name)
        if report_dir is not None:
            path = write_report(store, report_dir, sweep=sweep.name, title=f"attnlab sweep {sweep.name}")
            console.print(f"report: {path}")


def _print_leaderboard(store, sweep: str | None) -> None:
    from attnlab.report.tables import COLUMNS, entry_cells, leaderboard

    entries = leaderboard(store.runs(sweep=sweep))
    table = Table(title="leaderboard (best over learning rates, mean over seeds)", title_justify="left")
    for col in COLUMNS:
        table.add_column(col, justify="right" if col not in ("task", "mechanism", "position") else "left")
    for e in entries:
        table.add_row(*entry_cells(e))
    console.print(table)


@app.command()
def run(
    sweep: Annotated[str, typer.Argument(help="a preset name (see `attnlab presets`) or a Python file defining SWEEP")],
    db: Annotated[Path, typer.Option(help="results database (SQLite)")] = Path("runs/results.sqlite"),
    workers: Annotated[int | None, typer.Option(help="parallel runs; 0 runs in this process")] = None,
    threads: Annotated[int | None, typer.Option(help="torch threads per worker")] = None,
    report: Annotated[Path | None, typer.Option(help="write a markdown report with plots here")] = None,
) -> None:
    """Run a sweep; finished runs in the database are skipped, unfinished ones re-run."""
    _guard(lambda: _run(sweep, db, workers, threads, report))


@app.command()
def demo(
    db: Annotated[Path, typer.Option(help="results database")] = Path("runs/demo.sqlite"),
    report: Annotated[Path, typer.Option(help="report folder")] = Path("runs/demo"),
) -> None:
    """The quick sweep: six attention mechanisms on MQAR, a leaderboard and a report (a few minutes, 2 cores)."""
    _guard(lambda: _run("quick", db, None, None, report))


@app.command()
def leaderboard(db: Annotated[Path, typer.Argument(help="results database")], sweep: str | None = None) -> None:
    """Print the leaderboard of a results database."""
    from attnlab.runner.store import Store

    if not db.is_file():
        _fail(ConfigError("db", str(db), "no such file"))
    with Store(db) as store:
        _print_leaderboard(store, sweep)


@app.command()
def docs(out: Annotated[Path, typer.Option(help="docs folder")] = Path("docs")) -> None:
    """Write one page and one picture per registry entry, and the compatibility matrix."""
    from attnlab.report.zoo_docs import write_docs

    written = write_docs(out)
    console.print(f"wrote {len(written)} files under {out}/")


@app.command()
def presets() -> None:
    """List the sweep presets."""
    from attnlab.sweeps import load_sweep, preset_names

    for name in preset_names():
        s = load_sweep(name)
        console.print(f"{name}: {len(s.runs())} runs — tasks {[t.name for t in s.tasks]}")


def _fail(err: Exception) -> None:
    console.print(f"[red]error:[/red] {err}")
    raise typer.Exit(2)


def _guard(fn) -> None:
    try:
        fn()
    except ConfigError as err:
        _fail(err)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/yellow]: unfinished runs stay queued; run the same command to resume")
        raise typer.Exit(130) from None


if __name__ == "__main__":
    app()
