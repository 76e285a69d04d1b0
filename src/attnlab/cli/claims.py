"""``attnlab claims list | run [NAME…] | report``: each source paper's headline claim with a verdict
(``attnlab.claims``)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich import box
from rich.markup import escape
from rich.table import Table

from attnlab.cli.console import console
from attnlab.cli.guard import guarded
from attnlab.cli.sweeps import open_results

claims_app = typer.Typer(add_completion=False, no_args_is_help=True)
DEFAULT_DB = Path("runs/claims.sqlite")
VERDICT_STYLE = {"holds": "green", "does not hold": "red", "inconclusive": "yellow", "not run": "dim"}


def _table(title: str, columns: list[str], rows: list[list[str]]) -> Table:
    table = Table(title=escape(title), title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    for column in columns:
        table.add_column(column, no_wrap=column == "claim")
    for row in rows:
        style = VERDICT_STYLE.get(row[2]) if len(row) > 2 else None
        table.add_row(*(escape(cell) for cell in row), style=style)
    return table


@claims_app.command("list")
@guarded
def list_claims() -> None:
    """Every claim: its paper, the statement it tests and the rule that decides it."""
    from attnlab.claims.registry import all_claims

    claims = list(all_claims().values())
    rows = [
        [c.name, f"{c.paper.short} (arXiv:{c.paper.arxiv})", c.statement, c.rule.describe(), c.seeds] for c in claims
    ]
    papers = len({c.paper.arxiv for c in claims})
    title = f"{len(claims)} claims from {papers} papers"
    console.print(_table(title, ["claim", "paper", "statement", "rule", "seeds"], rows))


@claims_app.command("run")
@guarded
def run_claims(
    names: Annotated[list[str] | None, typer.Argument(help="claims to run (default: all)")] = None,
    db: Annotated[Path, typer.Option(help="results database (resumable)")] = DEFAULT_DB,
    workers: Annotated[int | None, typer.Option(help="parallel training runs (default: one per core)")] = None,
    threads: Annotated[int | None, typer.Option(help="torch threads per run")] = None,
    out: Annotated[Path | None, typer.Option(help="write the claims report (markdown + HTML) here")] = None,
) -> None:
    """Run the claims' experiments (what the database lacks) and print each verdict and the time it took."""
    from attnlab.claims.registry import all_claims, select
    from attnlab.claims.report import COLUMNS, table_rows, total_time_line, write_claims_report
    from attnlab.claims.run import claim_times, measure
    from attnlab.report.markdown import format_duration
    from attnlab.runner.store import Store

    chosen = select(names)
    t0 = time.perf_counter()
    results = {}
    with Store(db) as store:
        for claim in chosen:
            console.print(f"[bold]{escape(claim.name)}[/bold]: {escape(claim.statement)}")
            result = measure(claim, store, workers=workers, threads=threads)
            results[claim.name] = result
            console.print(
                f"  {result.verdict.outcome}: {escape(result.verdict.reason)} ({format_duration(result.wall_s)})"
            )
        chosen_times = claim_times(chosen, store)
        all_times = claim_times(list(all_claims().values()), store)
    console.print(_table("claims", COLUMNS, table_rows(chosen, results, chosen_times)))
    console.print(f"{len(chosen)} claim(s) in {format_duration(time.perf_counter() - t0)} this sitting")
    console.print(f"these claims: {total_time_line(chosen_times)}")
    if out is not None:
        console.print(f"report: {write_claims_report(list(all_claims().values()), results, out, all_times)}")


@claims_app.command("report")
@guarded
def report_claims(
    db: Annotated[Path, typer.Option(help="results database written by attnlab claims run")] = DEFAULT_DB,
    out: Annotated[Path, typer.Option(help="folder for claims.md, claims.html and the plots")] = Path("runs/claims"),
) -> None:
    """The claims table from what the database holds (nothing is run; a claim without its runs says so)."""
    from attnlab.claims.registry import all_claims
    from attnlab.claims.report import COLUMNS, stored_claims, table_rows, total_time_line, write_claims_report

    claims = list(all_claims().values())
    with open_results(db) as store:
        results, times = stored_claims(claims, store)
    console.print(_table("claims", COLUMNS, table_rows(claims, results, times)))
    console.print(total_time_line(times))
    console.print(f"report: {write_claims_report(claims, results, out, times)}")
