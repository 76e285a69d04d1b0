"""Sweeps from the command line: ``run``, ``demo``, ``presets``, ``leaderboard``, ``report``, ``export`` and
``search-status``.

A sweep with a learning-rate search (``Sweep.search``) runs round by round (``attnlab.runner.search``): ``run``
prints each rung as it is ranked and, at the end, each group's best learning rate and whether it lies at an edge of
the grid; ``search-status`` prints the same plans from a database without training anything.

A sweep writes into a results database (``runner.store``); the other commands read one. Every path and count is
checked before any work starts (an unknown preset, a bad worker count or an unusable report folder creates no
database), and a database that is not attnlab's is refused by ``Store`` with one line.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich import box
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from attnlab.cli.console import console
from attnlab.cli.guard import guard, guarded
from attnlab.cli.options import output_folder
from attnlab.errors import ConfigError

if TYPE_CHECKING:
    from attnlab.report.document import Block
    from attnlab.runner.config import RunConfig
    from attnlab.runner.store import Store

sweeps_app = typer.Typer(add_completion=False)

BACKENDS = ["local", "ray"]
RESUME_HINT = "unfinished runs stay queued; run the same command to resume"
RANK_BY_HELP = (
    "score (the task's metric) or emergence (MQAR, induction, copying: the median step the target accuracy "
    "was first reached, never = +inf; other tasks by their metric)"
)
TARGET_HELP = (
    "the accuracy an emergence step is measured at (default: each run's own train.target_accuracy, else 0.99; "
    "a run that stopped early at its own target cannot show a higher one)"
)


def open_results(db: Path) -> Store:
    """An existing results database, for the commands that read one (they never create a file)."""
    from attnlab.runner.store import Store

    if not db.exists():
        raise ConfigError("db", str(db), "no such file", "a results database written by attnlab run")
    return Store(db)  # refuses a folder, a file that is not SQLite and an SQLite file of another program


def check_sweep_name(store: Store, sweep: str | None) -> None:
    """``--sweep`` must name a sweep that has runs in ``store``."""
    if sweep is not None and sweep not in (known := store.sweeps()):
        raise ConfigError("sweep", sweep, f"no runs of this sweep in {store.path}", known or "none: it is empty")


def _run(
    sweep_name: str,
    db: Path,
    workers: int | None,
    threads: int | None,
    report_dir: Path | None,
    backend: str = "local",
    address: str | None = None,
    gpus: int = 0,
) -> None:
    from attnlab.cli.search_view import RungPrinter, describe_search, winners_table
    from attnlab.report.markdown import sittings_line, write_report
    from attnlab.runner.local import SweepSummary, check_gpus, check_pool, plan_workers, run_local
    from attnlab.runner.search import fixed_runs, has_search, plans, run_search, search_groups
    from attnlab.runner.store import Store
    from attnlab.sweeps import load_sweep

    if backend not in BACKENDS:
        raise ConfigError("backend", backend, "unknown backend", BACKENDS)
    if address is not None and backend != "ray":
        raise ConfigError("address", address, "is for the Ray backend only", ["--backend ray"])
    check_pool(workers, threads)  # before the database is made; Ray checks its own against the cluster's CPUs
    if backend == "local":
        check_gpus(gpus, workers)
    output_folder("report", report_dir)
    sweep = load_sweep(sweep_name)
    searching = has_search(sweep)
    groups = search_groups(sweep)
    runs = fixed_runs(sweep) if searching else sweep.runs()
    for line in sweep.skipped():
        console.print(f"[dim]skipped: {line}[/dim]")
    with Store(db) as store:
        store.enqueue(runs)
        todo = sum(store.status(r.run_id) != "done" for r in runs)
        total = len(runs)
        if searching:  # every run the search plans when none fails; those with a result are done
            current = plans(groups, store)
            total += sum(g.planned_runs() for g in groups)
            todo += sum(len(p.pending) for _, p in current)
            todo += sum(g.planned_runs() - sum(len(r.trials) for r in p.rungs) for g, p in current)
        local_gpus = gpus if backend == "local" else 0
        # a search's thread count follows from its whole plan, not from what is left, so a resumed search trains
        # with the thread count of an uninterrupted one (runs repeat bitwise only at a fixed thread count)
        n_workers, n_threads = plan_workers(max(total if searching else todo, 1), local_gpus or workers, threads)
        console.print(
            f"sweep [bold]{sweep.name}[/bold]: {total} runs{' planned' if searching else ''}, {total - todo} already "
            f"done; {n_workers if workers != 0 else 'in-process'} worker(s) × {n_threads} thread(s); database {db}"
        )
        if searching:
            console.print(escape(describe_search(groups)))
        t0 = time.perf_counter()
        sitting = store.begin_sitting(sweep.name, n_workers, n_threads)
        ended = "interrupted"
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, console=console) as progress:
            bar = progress.add_task(f"{sweep.name}", total=total, completed=total - todo)

            def on_done(run, outcome) -> None:
                acc = outcome.final.get("accuracy")
                result = f"accuracy {acc:.3f}" if outcome.ok else f"[red]failed[/red]: {outcome.error.splitlines()[0]}"
                steps = f" to step {run.train.stop_at}" if run.train.stop_at else ""
                went_on = f", continued from step {outcome.resumed_from}" if outcome.resumed_from else ""
                progress.console.print(
                    f"  {escape(run.task.name)} {run.mechanism} / {run.position} d{run.model.d_model} lr "
                    f"{run.train.lr:g} seed {run.seed}{steps}: {result} ({outcome.wall_s:.0f} s{went_on})"
                )
                progress.advance(bar)
                store.touch_sitting(sitting)

            summary = SweepSummary(0, 0, 0, 0)

            def run_batch(batch: Sequence[RunConfig]) -> None:
                if backend == "ray":
                    from attnlab.runner.ray_backend import run_ray

                    done = run_ray(
                        batch, store, address=address, workers=workers, threads=n_threads, on_done=on_done, gpus=gpus
                    )
                else:
                    done = run_local(batch, store, workers=workers, threads=n_threads, on_done=on_done, gpus=gpus)
                summary.done, summary.failed = summary.done + done.done, summary.failed + done.failed
                summary.skipped += done.skipped

            try:
                if not searching:
                    run_batch(runs)
                else:
                    with _ray_session(backend, address):  # one Ray instance for every round of the search
                        finished = run_search(sweep, store, run_batch, on_plans=RungPrinter(progress.console))
                    summary.skipped = total - todo
                ended = "finished"
            finally:
                store.touch_sitting(sitting, ended)
        sittings = store.sittings(sweep.name)
        console.print(
            f"finished in {time.perf_counter() - t0:.0f} s: {summary.done} done, {summary.failed} failed, "
            f"{summary.skipped} skipped (already done)"
        )
        console.print(f"wall time of sweep {sweep.name}: {sittings_line(sittings)}")
        if searching:
            console.print(winners_table(finished))
        print_leaderboard(store, sweep.name)
        if report_dir is not None:
            path = write_report(store, report_dir, sweep=sweep.name, title=f"attnlab sweep {sweep.name}")
            console.print(f"report: {path}")


@contextmanager
def _ray_session(backend: str, address: str | None) -> Iterator[None]:
    """With the Ray backend, Ray started (or connected) once around the search's rounds, and shut down after
    when this started it; nothing for the local backend."""
    if backend != "ray":
        yield
        return
    from attnlab.runner.ray_backend import connect, import_ray

    ray = import_ray()
    started = connect(ray, address)
    try:
        yield
    finally:
        if started:
            ray.shutdown()


def print_leaderboard(store: Store, sweep: str | None, rank_by: str = "score", target: float | None = None) -> None:
    """The leaderboard of ``store`` (one sweep's runs, or all) as a rich table, with its caption (the interval
    and test, or that it is built on one seed; the edge marks; the emergence target) under the title."""
    from attnlab.report.tables import cells, cli_columns, has_intervals, leaderboard, leaderboard_caption

    curves: dict[str, list[tuple[int, str, float]]] = {}
    for run_id, step, name, value in store.metrics(sweep=sweep):
        curves.setdefault(run_id, []).append((step, name, value))
    entries = leaderboard(store.runs(sweep=sweep), curves=curves, target=target, rank_by=rank_by)
    seeds = "mean over seeds" if has_intervals(entries) else "one seed per row, no intervals"
    ranked = "; ranked by emergence step where measured, else by the task's metric" if rank_by == "emergence" else ""
    title = f"leaderboard (best over learning rates, {seeds}{ranked})"
    table = Table(
        title=escape(title),
        caption=escape(leaderboard_caption(entries, "task")),
        title_justify="left",
        box=box.SIMPLE_HEAD,  # no vertical rules, padding shared: 13 columns fit a pipe's 140 without wrapping
        pad_edge=False,
        collapse_padding=True,
    )
    table.caption_justify = "left"
    columns = cli_columns(entries)
    for col in columns:
        table.add_column(col, justify="right" if col not in ("task", "mechanism", "position") else "left")
    for e in entries:  # escaped: task labels like lm[length=128 tokenizer=byte] are not rich markup
        table.add_row(*(escape(cell) for cell in cells(e, columns)))
    console.print(table)


@sweeps_app.command()
def run(
    sweep: Annotated[str, typer.Argument(help="a preset name (see `attnlab presets`) or a Python file defining SWEEP")],
    db: Annotated[Path, typer.Option(help="results database (SQLite)")] = Path("runs/results.sqlite"),
    workers: Annotated[int | None, typer.Option(help="parallel runs; 0 runs in this process")] = None,
    threads: Annotated[int | None, typer.Option(help="torch threads per worker")] = None,
    report: Annotated[Path | None, typer.Option(help="write the HTML + markdown report with plots here")] = None,
    backend: Annotated[str, typer.Option(help="local (a process pool) or ray")] = "local",
    address: Annotated[str | None, typer.Option(help="Ray cluster address (auto, ray://host:port)")] = None,
    gpus: Annotated[
        int, typer.Option(help="local: GPUs to use, one run per GPU (CUDA_VISIBLE_DEVICES); ray: GPUs per run")
    ] = 0,
) -> None:
    """Run a sweep; finished runs in the database are skipped, unfinished ones re-run."""
    guard(lambda: _run(sweep, db, workers, threads, report, backend, address, gpus), on_interrupt=RESUME_HINT)


@sweeps_app.command()
def demo(
    db: Annotated[Path, typer.Option(help="results database")] = Path("runs/demo.sqlite"),
    report: Annotated[Path, typer.Option(help="report folder")] = Path("runs/demo"),
) -> None:
    """The quick sweep: six attention mechanisms on MQAR, a leaderboard and a report (a few minutes, 2 cores)."""
    guard(lambda: _run("quick", db, None, None, report), on_interrupt=RESUME_HINT)


@sweeps_app.command()
@guarded
def presets() -> None:
    """List the sweep presets."""
    from attnlab.runner.search import fixed_runs, search_groups
    from attnlab.sweeps import load_sweep, preset_names

    for name in preset_names():
        s = load_sweep(name)
        n = len(fixed_runs(s)) + sum(g.planned_runs() for g in search_groups(s))
        console.print(f"{name}: {n} runs — tasks {[t.name for t in s.tasks]}")


@sweeps_app.command("search-status")
@guarded
def search_status(
    sweep: Annotated[str, typer.Argument(help="the sweep with a search: a preset name or a Python file")],
    db: Annotated[Path, typer.Option(help="results database")] = Path("runs/results.sqlite"),
) -> None:
    """Print a learning-rate search's plans from a database: each rung's results, ranking and the winners."""
    from attnlab.cli.search_view import describe_search, status_table, winners_table
    from attnlab.runner.search import has_search, plans, search_groups
    from attnlab.sweeps import load_sweep

    loaded = load_sweep(sweep)
    if not has_search(loaded):
        raise ConfigError("sweep", sweep, "has no learning-rate search", "a sweep with search=SearchConfig(...)")
    groups = search_groups(loaded)
    with open_results(db) as store:
        current = plans(groups, store)
    console.print(escape(describe_search(groups)))
    console.print(status_table(current))
    console.print(winners_table(current))


@sweeps_app.command()
@guarded
def leaderboard(
    db: Annotated[Path, typer.Argument(help="results database")],
    sweep: str | None = None,
    rank_by: Annotated[str, typer.Option(help=RANK_BY_HELP)] = "score",
    target: Annotated[float | None, typer.Option(help=TARGET_HELP)] = None,
) -> None:
    """Print the leaderboard of a results database: mean over seeds, 95% t interval, test against the best."""
    from attnlab.report.leaderboard_stats import check_rank_by, check_target

    check_rank_by(rank_by)
    check_target(target)
    with open_results(db) as store:
        check_sweep_name(store, sweep)
        print_leaderboard(store, sweep, rank_by, target)


@sweeps_app.command()
@guarded
def report(
    db: Annotated[Path, typer.Argument(help="results database")],
    out: Annotated[Path | None, typer.Option(help="report folder (default: next to the database)")] = None,
    sweep: Annotated[str | None, typer.Option(help="only this sweep's runs")] = None,
    rank_by: Annotated[str, typer.Option(help=RANK_BY_HELP)] = "score",
    target: Annotated[float | None, typer.Option(help=TARGET_HELP)] = None,
) -> None:
    """Write report.html (self-contained) and report.md with leaderboards and plots for a results database."""
    from attnlab.report.leaderboard_stats import check_rank_by, check_target
    from attnlab.report.markdown import write_report

    check_rank_by(rank_by)
    check_target(target)
    folder = output_folder("out", out if out is not None else db.with_suffix(""))
    with open_results(db) as store:
        check_sweep_name(store, sweep)
        path = write_report(
            store,
            folder,
            sweep=sweep,
            title=f"attnlab report: {db.name}",
            rank_by=rank_by,
            target=target,
            extra=claims_section(store) if sweep is None else [],
        )
    console.print(f"report: {path} and {path.with_suffix('.html')}")


def claims_section(store: Store) -> list[Block]:
    """The claims' table and sections when ``store`` is a claims database (``attnlab claims run`` wrote to it),
    else nothing."""
    from attnlab.claims.registry import all_claims
    from attnlab.claims.report import report_blocks, stored_claims
    from attnlab.claims.run import SITTING_PREFIX

    if not any(s["sweep"].startswith(SITTING_PREFIX) for s in store.sittings()):
        return []
    claims = list(all_claims().values())
    return report_blocks(claims, *stored_claims(claims, store))


@sweeps_app.command()
@guarded
def export(
    db: Annotated[Path, typer.Argument(help="results database")],
    path: Annotated[Path, typer.Argument(help="output file: .csv or .parquet")],
    sweep: Annotated[str | None, typer.Option(help="only this sweep's runs")] = None,
) -> None:
    """Export one row per run (config axes, status, wall time, every final metric) to CSV or Parquet."""
    from attnlab.report.export import export as export_runs

    with open_results(db) as store:
        check_sweep_name(store, sweep)
        n = export_runs(store, path, sweep=sweep)
    console.print(f"wrote {n} runs to {path}")
