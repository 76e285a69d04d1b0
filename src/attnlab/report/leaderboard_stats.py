"""The statistics behind a leaderboard row: which runs count, the per-seed values, emergence steps, and the
test against the task's best. Pure functions over ``Store.runs`` rows (and, for emergence, their curves); the
numbers themselves come from ``attnlab.stats``.

Which runs count (``final_rows``): a learning-rate search by successive halving stores each rung's short run
as a row of its own, with ``train.stop_at`` below ``train.steps`` in its config. Such a row is a means of the
search, not a result: ranking it beside full-length runs would compare budgets, not mechanisms. A row counts
when its config has no ``stop_at``, or ``stop_at`` is None or not below ``steps``.

The interval (``INTERVAL_KIND``): Student's t over seeds, mean ± t₀.₉₇₅,ₙ₋₁ · s/√n, for every row with at least
two finished seeds; with one seed there is no interval. The presets run 3–5 seeds, where the bootstrap has
too few distinct resamples to say more (3 values give at most 10 distinct resampled means; Efron & Tibshirani
1993, *An Introduction to the Bootstrap*, §13), and t is exact when the seed-to-seed spread is normal.

Against the best (``VERSUS_TEST``): each row is compared with the best row of its task by a paired t-test over
the seeds both finished (the same seed means the same data and initialisation), the p-values Holm-corrected
over the task's comparisons (``stats.compare.versus_best``); a row is "tied" with the best when the adjusted
p-value exceeds ``ALPHA``.

Emergence (``EMERGENCE_TASKS``): tasks learned in a sudden transition rather than gradually — multi-query
associative recall (Arora et al. 2023, "Zoology", arXiv:2312.04927), induction heads' phase change (Olsson et
al. 2022, arXiv:2209.11895) and copying (Lv et al. 2024, "Language Models 'Grok' to Copy", arXiv:2409.09281).
For them the step at which the target accuracy was first reached, read from the stored ``eval_accuracy``
curve, says more than the final accuracy. The target is the run's own ``train.target_accuracy`` (its early
stop: the run ends at the first evaluation that reaches it) or, when unset, ``DEFAULT_TARGET`` = 0.99, the
early-stop target of every preset (``quick``, ``standard``, ``zoology-mqar``), so a run without one is measured
at the bar the others stop at. Reported as the median over seeds with "never" counted as +∞ and the number of
seeds that reached it (``stats.emergence``), never as a mean of the seeds that happened to get there.
"""

from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from attnlab.errors import ConfigError
from attnlab.stats import EmergenceSummary, VersusBest, emergence_step, summarise_emergence, versus_best

EMERGENCE_TASKS = frozenset({"mqar", "induction", "copying"})
DEFAULT_TARGET = 0.99
EMERGENCE_CURVE = "eval_accuracy"
LEVEL = 0.95
ALPHA = 0.05
INTERVAL_KIND = "t"
RANK_BY = ("score", "emergence")

Curves = Mapping[str, Sequence[tuple[int, str, float]]]  # run_id → [(step, name, value)]


def train_config(row: Mapping[str, Any]) -> dict[str, Any]:
    """The ``train`` part of a row's stored config (empty when the row has no readable config)."""
    text = row.get("config")
    if not text:
        return {}
    try:
        train = json.loads(text).get("train", {})
    except (json.JSONDecodeError, AttributeError):
        return {}
    return train if isinstance(train, dict) else {}


def is_final(row: Mapping[str, Any]) -> bool:
    """Whether a row is a result, not an intermediate rung of a learning-rate search (``stop_at < steps``)."""
    train = train_config(row)
    stop_at, steps = train.get("stop_at"), train.get("steps")
    return stop_at is None or steps is None or stop_at >= steps


def final_rows(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows a leaderboard ranks: every row but the intermediate rungs of a learning-rate search."""
    return [row for row in rows if is_final(row)]


def check_rank_by(rank_by: str) -> None:
    """``rank_by`` must be one of ``RANK_BY``."""
    if rank_by not in RANK_BY:
        raise ConfigError("rank_by", rank_by, "is not a ranking", RANK_BY)


def check_target(target: float | None) -> None:
    """An emergence target is an accuracy in (0, 1], or None for each run's own."""
    if target is not None and not 0.0 < target <= 1.0:
        raise ConfigError("target", target, "is not an accuracy", "0 < target ≤ 1, e.g. 0.99")


def seed_values(runs: Iterable[Mapping[str, Any]], metric: str) -> dict[int, float]:
    """``{seed: metric}`` over ``runs`` (a run missing the metric, or with a non-finite one, is NaN: failed);
    two runs of one seed (e.g. from two sweeps) are averaged."""
    by_seed: dict[int, list[float]] = defaultdict(list)
    for run in runs:
        value = run["final"].get(metric)
        value = float(value) if isinstance(value, int | float) else math.nan  # a null in the JSON: no value
        by_seed[int(run["seed"])].append(value if math.isfinite(value) else math.nan)
    return {seed: statistics.fmean(values) for seed, values in sorted(by_seed.items())}


def emerges(row: Mapping[str, Any]) -> bool:
    """Whether the row's task is one learned in a sudden transition (``EMERGENCE_TASKS``)."""
    name = row.get("task_name") or row["task"]
    return str(name).split("[", 1)[0] in EMERGENCE_TASKS


def run_target(row: Mapping[str, Any], target: float | None = None) -> float:
    """The accuracy a run's emergence step is measured at: ``target``, else its early-stop target, else 0.99."""
    if target is not None:
        return target
    own = train_config(row).get("target_accuracy")
    return float(own) if own is not None else DEFAULT_TARGET


def with_rungs(rows: Iterable[Mapping[str, Any]], curves: Curves) -> dict[str, list[tuple[int, str, float]]]:
    """Each run's curve with the points of the search rungs it continued from, at steps its own curve lacks.

    A learning-rate search continues a promoted run from its checkpoint, so the row of its last rung may hold only
    the steps after that checkpoint; the transition can lie in a rung below. Rungs of one run share the sweep,
    task, mechanism, position, width, learning rate and seed.
    """
    rows = list(rows)
    lineage: dict[tuple, list[str]] = defaultdict(list)
    for row in rows:
        if not is_final(row):
            lineage[_lineage_key(row)].append(row["run_id"])
    out = {run_id: list(points) for run_id, points in curves.items()}
    for row in rows:
        rungs = lineage.get(_lineage_key(row), []) if is_final(row) else []
        own = out.setdefault(row["run_id"], [])
        seen = {(step, name) for step, name, _ in own}
        for rung in rungs:
            extra = [p for p in curves.get(rung, ()) if (p[0], p[1]) not in seen]
            own.extend(extra)
            seen |= {(step, name) for step, name, _ in extra}
    return out


def _lineage_key(row: Mapping[str, Any]) -> tuple:
    keys = ("sweep", "task", "mechanism", "position", "width", "lr", "seed")
    return tuple(row.get(k) for k in keys)


def run_emergence(row: Mapping[str, Any], curves: Curves, target: float | None = None) -> float:
    """The first evaluation step of the row's ``eval_accuracy`` curve at or above its target; NaN if never."""
    curve = curves.get(row["run_id"], ())
    points = sorted((int(step), value) for step, name, value in curve if name == EMERGENCE_CURVE)
    return emergence_step(points, run_target(row, target))


def emergence_summary(runs: Sequence[Mapping[str, Any]], curves: Curves, target: float | None) -> EmergenceSummary:
    """The median emergence step over ``runs`` ("never" as +∞) and how many reached the target."""
    return summarise_emergence([run_emergence(run, curves, target) for run in runs])


def versus_task_best(scores: Mapping[str, Mapping[int, float]], higher_is_better: bool) -> dict[str, VersusBest]:
    """Each named row's paired test against its task's best (``stats.versus_best``, Holm over the task)."""
    return {v.name: v for v in versus_best(scores, higher_is_better=higher_is_better, alpha=ALPHA, level=LEVEL)}


def format_p(p: float) -> str:
    """A p-value for a table: three decimals, ``<0.001`` below that, ``–`` for none."""
    if math.isnan(p):
        return "–"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def p_text(p: float) -> str:
    """``p=0.412`` or ``p<0.001``."""
    text = format_p(p)
    return f"p{text}" if text.startswith("<") else f"p={text}"


def versus_cell(v: VersusBest | None) -> str:
    """``best``, ``tied p=0.412`` (cannot be told apart at α), ``worse p=0.003``, ``untested (1 shared seed)``."""
    if v is None or math.isnan(v.mean):
        return "–"
    if v.comparison is None:
        return "best"
    if math.isnan(v.p_holm):
        shared = len(v.comparison.seeds)
        return f"untested ({shared} shared seed{'s' if shared != 1 else ''})"
    return f"{'tied' if v.tied_with_best else 'worse'} {p_text(v.p_holm)}"


def emergence_cell(summary: EmergenceSummary | None) -> str:
    """``300 (3/3)``: the median step and seeds reached / seeds; ``never (1/3)`` when the median is +∞."""
    if summary is None or summary.n == 0:
        return "–"
    median = "never" if math.isinf(summary.median_step) else f"{summary.median_step:g}"
    return f"{median} ({summary.n_reached}/{summary.n})"


def targets_text(targets: Iterable[float]) -> str:
    """``0.99`` or ``0.9, 0.99``: the emergence targets of a table's runs."""
    return ", ".join(f"{t:g}" for t in sorted(set(targets)))
