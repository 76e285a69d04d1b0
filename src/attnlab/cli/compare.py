"""``attnlab compare DB A B``: the paired difference of two mechanisms per task (``report.compare``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich import box
from rich.markup import escape
from rich.table import Table

from attnlab.cli.console import console
from attnlab.cli.guard import guarded
from attnlab.cli.sweeps import check_sweep_name, open_results

compare_app = typer.Typer(add_completion=False)


@compare_app.command()
@guarded
def compare(
    db: Annotated[Path, typer.Argument(help="results database")],
    a: Annotated[str, typer.Argument(metavar="A", help="a mechanism, named as in the leaderboard")],
    b: Annotated[str, typer.Argument(metavar="B", help="another mechanism")],
    sweep: Annotated[str | None, typer.Option(help="only this sweep's runs")] = None,
    metric: Annotated[
        str | None, typer.Option(help="compare this final metric (default: each task's ranking one)")
    ] = None,
    lr: Annotated[float | None, typer.Option(help="both at this learning rate (default: each at its best)")] = None,
) -> None:
    """Per task, A − B paired over the seeds both finished: the mean difference, its 95% t interval, the p-value."""
    from attnlab.report.compare import COMPARE_COLUMNS, compare_mechanisms, comparison_caption, comparison_cells

    with open_results(db) as store:
        check_sweep_name(store, sweep)
        result = compare_mechanisms(store.runs(sweep=sweep), a, b, metric=metric, lr=lr)
    title = f"compare {a} − {b} (paired over shared seeds)"
    table = Table(
        title=escape(title),
        caption=escape(comparison_caption(result, lr)),
        title_justify="left",
        box=box.SIMPLE_HEAD,  # as the leaderboard's
        pad_edge=False,
        collapse_padding=True,
    )
    table.caption_justify = "left"
    for col in COMPARE_COLUMNS:
        table.add_column(col, justify="left" if col in ("task", "position", "metric") else "right")
    for group in result.groups:
        table.add_row(*(escape(cell) for cell in comparison_cells(group)))
    console.print(table)
