"""A paired comparison of two groups of runs that the leaderboard's arms cannot tell apart by task, mechanism and
position (a leading underscore: not a paper module): runs that differ in a task's format or a training option.
Each group is picked by a predicate on the run's stored config; the effect is ``a − b`` per seed both finished."""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable
from typing import Any

from attnlab.claims.base import Curves, Measurement, Rows
from attnlab.report.leaderboard_stats import seed_values

Pick = Callable[[dict[str, Any]], bool]


def config_of(row: dict[str, Any]) -> dict[str, Any]:
    """A result row's stored run config (empty when it has none)."""
    return json.loads(row["config"]) if row.get("config") else {}


def paired(metric: str, a: tuple[str, Pick], b: tuple[str, Pick]) -> Callable[[Rows, Curves], Measurement]:
    """A ``SweepExperiment.derive``: ``metric`` of the runs ``a`` picks − that of the runs ``b`` picks, per shared
    seed (each side's seeds averaged if a seed has several runs, ``seed_values``); ``a`` and ``b`` are (label,
    predicate on the run's config)."""

    def derive(rows: Rows, curves: Curves) -> Measurement:
        sides = [(label, seed_values([r for r in rows if pick(config_of(r))], metric)) for label, pick in (a, b)]
        (_, va), (_, vb) = sides
        values = {s: va[s] - vb[s] for s in sorted(set(va) & set(vb))}
        table: list[dict[str, object]] = [
            {"arm": label, "seeds": len(v), "mean": statistics.fmean(v.values()) if v else float("nan"), "per seed": v}
            for label, v in sides
        ]
        series = {label: [(float(s), x) for s, x in v.items()] for label, v in sides}
        return Measurement(values=values, rows=table, series=series, xlabel="seed", ylabel=metric)

    return derive
