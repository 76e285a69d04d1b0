"""Intervals beyond the ranking metric: ``Entry.interval_of`` for any final metric (clipped to [0, 1] for a fraction,
``exact_match`` included), and the report's length-extrapolation table with each cell's 95% interval over seeds."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from pathlib import Path

from synthetic_db import synthetic_final

from attnlab.report.markdown import write_report
from attnlab.report.tables import Entry, fmt, leaderboard
from attnlab.runner.store import Store
from attnlab.stats import mean_interval


def entry(seed_metrics: dict[str, dict[int, float]]) -> Entry:
    return Entry("t", "m", "rope", 16, 1e-3, math.nan, math.nan, 3, 0.0, 0.0, 0, seed_metrics=seed_metrics)


def test_interval_of_any_metric_is_the_t_interval_over_seeds_clipped_to_its_range() -> None:
    values = {0: 0.0, 1: 0.0, 2: 0.9}
    e = entry({"exact_match@2x": values, "loss@2x": values, "accuracy@2x": {0: 0.5}})
    raw = mean_interval(values.values(), "t", 0.95)
    assert raw.low < 0 < 1 < raw.high  # so both clips below are exercised
    clipped = e.interval_of("exact_match@2x")
    assert (clipped.low, clipped.mean, clipped.high) == (0.0, raw.mean, 1.0)
    loss = e.interval_of("loss@2x")
    assert (loss.low, loss.high) == (0.0, raw.high)  # a loss is only bounded below
    assert not e.interval_of("accuracy@2x").has_interval  # one seed: no interval
    assert not e.interval_of("not_reported").has_interval


def test_the_extrapolation_table_shows_each_metric_with_its_interval(
    make_db: Callable[..., Store], tmp_path: Path
) -> None:
    store = make_db("intervals", factors=(2.0,), seeds=[0, 1, 2], lrs=[1e-3, 3e-3], widths=[16])
    md = write_report(store, tmp_path).read_text()
    rows = [r for r in store.runs() if r["mechanism"] == "softmax" and r["lr"] == 3e-3]  # the best lr (+0.05)
    assert {e.best_lr for e in leaderboard(store.runs()) if e.mechanism == "softmax"} == {3e-3}
    cells = []
    for metric in ("accuracy", "accuracy@2x", "loss", "loss@2x"):
        per_seed = [r["final"][metric] for r in sorted(rows, key=lambda r: r["seed"])]
        assert per_seed == [synthetic_final_of(r, metric) for r in sorted(rows, key=lambda r: r["seed"])]
        interval = mean_interval(per_seed, "t", 0.95)
        low = max(interval.low, 0.0)
        high = min(interval.high, 1.0) if metric.startswith("accuracy") else interval.high
        cells.append(f"{fmt(statistics.fmean(per_seed))} \\[{fmt(low)}, {fmt(high)}\\]")
    assert f"| softmax | {' | '.join(cells)} |" in md
    assert "95% Student-t interval over seeds" in md


def synthetic_final_of(row: dict, metric: str) -> float:
    """The made-up value ``synthetic_db`` recorded for this row (recomputed from its config)."""
    from attnlab.runner.config import run_from_json

    return synthetic_final(run_from_json(row["config"]), (2.0,))[metric]
