"""``attnlab sensitivity DB``: final loss and attention logits against the learning rate, per width and variant
(plain, qk-norm, z-loss), and each curve's learning-rate sensitivity (``attnlab.experiments.lr_sensitivity``)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from attnlab.cli.console import console
from attnlab.cli.guard import guarded
from attnlab.cli.options import output_folder
from attnlab.errors import ConfigError

sensitivity_app = typer.Typer(add_completion=False)


def _fmt(value: float, spec: str = ".3f") -> str:
    return "–" if math.isnan(value) else format(value, spec)


@sensitivity_app.command()
@guarded
def sensitivity(
    db: Annotated[Path, typer.Argument(help="results database of a sweep over learning rates (lr-sensitivity)")],
    sweep: Annotated[str | None, typer.Option(help="only this sweep's runs")] = "lr-sensitivity",
    out: Annotated[Path | None, typer.Option(help="write loss_vs_lr.png and max_logit_vs_lr.png here")] = None,
) -> None:
    """Per width and variant: the learning-rate sensitivity, the best learning rate and loss, the largest attention
    logit and log Z at the highest learning rate; plots of both against the learning rate."""
    from attnlab.experiments.lr_sensitivity import sensitivity_curves
    from attnlab.report.plots import lr_png, write_atomic
    from attnlab.runner.store import Store

    if not db.is_file():
        raise ConfigError("db", str(db), "no such results database")
    folder = output_folder("out", out) if out is not None else None
    with Store(db) as store:
        rows = store.runs(sweep=sweep)
        if not rows:
            raise ConfigError("sweep", sweep, f"has no runs in {db}", store.sweeps())
        curves: dict[str, list[tuple[int, str, float]]] = {}
        for run_id, step, name, value in store.metrics(sweep=sweep):
            curves.setdefault(run_id, []).append((step, name, value))
    found = sensitivity_curves(rows, curves)
    table = Table(title=escape(f"learning-rate sensitivity ({rows[0]['task']}; lower is better)"), title_justify="left")
    columns = ("width", "variant", "LR sensitivity", "best lr", "best loss", "max logit @ top lr", "log Z @ top lr")
    for column in columns:
        table.add_column(column, justify="left" if column == "variant" else "right")
    for c in found:
        top = max(c.points, key=lambda p: p.lr)
        table.add_row(
            str(c.width),
            escape(c.variant),
            _fmt(c.sensitivity),
            f"{c.best.lr:g}",
            _fmt(c.best.loss),
            _fmt(top.max_logit, ".1f"),
            _fmt(top.log_z, ".2f"),
        )
    console.print(table)
    lrs = sorted({p.lr for c in found for p in c.points})
    by_lr = Table(title="final loss (and largest attention logit) at each learning rate", title_justify="left")
    for column in ("width", "variant", *(f"{lr:g}" for lr in lrs)):
        by_lr.add_column(column, justify="left" if column == "variant" else "right")
    for c in found:
        at = {p.lr: p for p in c.points}
        cells = [f"{at[lr].loss:.3f} ({at[lr].max_logit:.3g})" if lr in at else "–" for lr in lrs]
        by_lr.add_row(str(c.width), escape(c.variant), *cells)
    console.print(by_lr)
    if folder is not None:
        loss: dict[str, dict[str, list[tuple[float, float]]]] = {}
        logit: dict[str, dict[str, list[tuple[float, float]]]] = {}
        for c in found:  # one panel per width, one line per variant
            loss.setdefault(f"width {c.width}", {})[c.variant] = [(p.lr, p.loss) for p in c.points]
            logit.setdefault(f"width {c.width}", {})[c.variant] = [(p.lr, p.max_logit) for p in c.points]
        write_atomic(folder / "loss_vs_lr.png", lr_png(loss, "final loss (nats/token)", "final loss vs learning rate"))
        write_atomic(
            folder / "max_logit_vs_lr.png",
            lr_png(logit, "largest attention logit", "attention logits at the end vs learning rate", log_y=True),
        )
        console.print(f"plots: {folder / 'loss_vs_lr.png'} and {folder / 'max_logit_vs_lr.png'}")
