"""``attnlab quantise RUN_ID``: a trained run's evaluation loss in full precision and under W8A8 fake quantisation,
with the activation outliers per layer (``attnlab.experiments.quantisation``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from attnlab.cli.console import console
from attnlab.cli.guard import guarded
from attnlab.cli.inspect import RUN_DBS, find_run
from attnlab.errors import ConfigError

quantise_app = typer.Typer(add_completion=False)


@quantise_app.command()
@guarded
def quantise(
    run_id: Annotated[str, typer.Argument(help="a finished run's id (attnlab sweeps leaderboard / export list them)")],
    db: Annotated[Path | None, typer.Option(help="results database (default: the usual ones under runs/)")] = None,
    examples: Annotated[int | None, typer.Option(help="evaluation examples (default: the run's eval_examples)")] = None,
) -> None:
    """W8A8 (weights per tensor / per channel, activations per tensor, static ranges) against full precision."""
    from attnlab.experiments.quantisation import quantisation_probe
    from attnlab.runner.checkpoint_model import load_run

    path = find_run(run_id, db)
    if path is None:
        where = str(db) if db is not None else ", ".join(str(p) for p in RUN_DBS)
        raise ConfigError("run_id", run_id, f"not found in {where}", "a run id of a results database (--db)")
    if examples is not None and examples < 1:
        raise ConfigError("examples", examples, "must be at least 1")
    model, cfg = load_run(path, run_id)
    result = quantisation_probe(model, cfg.task, cfg.train, cfg.seed, examples)
    table = Table(title=f"run {run_id}: {cfg.model.attention.label} on {cfg.task.name}")
    for column in ("setting", "loss", "accuracy", "gap"):
        table.add_column(column, justify="left" if column == "setting" else "right")
    for setting, values in result.metrics.items():
        gap = "" if setting == "fp32" else f"{result.gap(setting):+.4f}"
        table.add_row(setting, f"{values['loss']:.4f}", f"{values['accuracy']:.4f}", gap)
    console.print(table)
    outliers = Table(title="activation outliers (first evaluation batch)")
    for column in ("activation", "max |x|", "kurtosis"):
        outliers.add_column(column, justify="left" if column == "activation" else "right")
    for name, values in result.outliers.items():
        outliers.add_row(name, f"{values['max_abs']:.2f}", f"{values['kurtosis']:.1f}")
    console.print(outliers)
