"""Leaderboards from the results database: best over learning rates (as Zoology reports), mean over seeds.

Which metric ranks a task (``ranking_metric``): ``loss`` (lower is better, shown with the perplexity
exp(loss)) for language modelling — the task named ``lm`` — and for any task whose finished runs report a
loss but no accuracy; ``accuracy`` (higher is better) for every other task. Token accuracy says little about
a language model, and a task that reports no accuracy can only be judged by its loss.

Length-extrapolation metrics are final metrics named ``<metric>@<factor>x`` (``loss@2x``, ``accuracy@4x``:
the metric evaluated at factor × the training length); ``extrapolation_key`` parses them.
"""

from __future__ import annotations

import math
import re
import statistics
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from attnlab.report.leaderboard_stats import (
    INTERVAL_KIND,
    LEVEL,
    Curves,
    check_rank_by,
    check_target,
    emergence_cell,
    emergence_summary,
    emerges,
    final_rows,
    run_target,
    seed_values,
    targets_text,
    versus_cell,
    versus_task_best,
    with_rungs,
)
from attnlab.stats import EmergenceSummary, Interval, VersusBest, grid_edge, mean_interval
from attnlab.tasks.base import task_ranking_metric

LOWER_IS_BETTER = frozenset({"loss", "ppl", "perplexity"})
UNIT_METRICS = frozenset({"accuracy", "exact_match"})  # fractions of positions or examples: values in [0, 1]
EXTRAPOLATION = re.compile(r"(\w+)@([\d.]+)x(\[\w+\])?")


@dataclass
class Entry:
    """One leaderboard row: a (task, mechanism, position, width) group at its best learning rate."""

    task: str
    mechanism: str
    position: str
    width: int
    best_lr: float
    accuracy: float  # mean over seeds at the best learning rate (nan when the task reports none)
    loss: float
    seeds: int
    steps: float  # mean steps taken (early stop)
    wall_s: float  # mean wall time per run
    failed: int  # failed runs in this group (all learning rates)
    metric: str = "accuracy"  # the metric that chose the learning rate and ranks the entry
    finals: dict[str, float] = field(default_factory=dict)  # every final metric, mean over seeds at the best lr
    scores: dict[int, float] = field(default_factory=dict)  # the ranking metric per seed at the best lr (nan: failed)
    seed_metrics: dict[str, dict[int, float]] = field(default_factory=dict)  # every final metric per seed, best lr
    lrs: tuple[float, ...] = ()  # the learning rates tried for this group (every row, search rungs included)
    versus: VersusBest | None = None  # the paired test against the task's best (Holm over the task)
    emergence: EmergenceSummary | None = None  # emergence tasks with curves only
    targets: tuple[float, ...] = ()  # the emergence targets of its runs

    @property
    def score(self) -> float:
        """The ranking metric's value (nan when no run of the group finished)."""
        return self.finals.get(self.metric, math.nan)

    @property
    def ppl(self) -> float:
        """Perplexity exp(loss), with the loss in nats per scored token."""
        return safe_exp(self.loss)

    @property
    def interval(self) -> Interval:
        """The ranking metric's mean over the finished seeds at the best lr with its 95% Student-t interval
        (kind ``"none"`` with fewer than two seeds), clipped to the values the metric can take: [0, 1] for an
        accuracy, ≥ 0 for a loss. (A t interval is symmetric; with three seeds of which one failed it reaches far
        beyond them, and a bound no run can cross says nothing.)"""
        return self.interval_of(self.metric)

    def interval_of(self, metric: str) -> Interval:
        """``interval`` for any final metric of the entry (``accuracy@2x``, ``exact_match``, …): its values per
        seed at the best lr, clipped to [0, 1] for a fraction (``UNIT_METRICS``), else to ≥ 0."""
        values = self.scores if metric == self.metric else self.seed_metrics.get(metric, {})
        interval = mean_interval(values.values(), INTERVAL_KIND, LEVEL)
        if not interval.has_interval:
            return interval
        low, high = (0.0, 1.0) if metric_name(metric) in UNIT_METRICS else (0.0, math.inf)
        return replace(interval, low=max(interval.low, low), high=min(interval.high, high))

    @property
    def lr_edge(self) -> str | None:
        """``"high"`` / ``"low"`` when the best lr is the largest / smallest of two or more tried, else None."""
        if len(self.lrs) < 2 or self.best_lr != self.best_lr:
            return None
        return grid_edge(self.best_lr, self.lrs)


def safe_exp(value: float) -> float:
    """exp(value); inf when it overflows, nan for nan."""
    try:
        return math.exp(value)
    except OverflowError:
        return math.inf


def metric_name(metric: str) -> str:
    """The metric without its length-extrapolation factor and position: ``"accuracy@2x"`` and
    ``"accuracy@2x[rope_ntk_dynamic]"`` → ``"accuracy"``."""
    parsed = extrapolation_key(metric)
    return parsed[0].split("[")[0] if parsed else metric


def lower_is_better(metric: str) -> bool:
    """Whether smaller values of ``metric`` are better (loss, perplexity, and their @Nx variants)."""
    return metric_name(metric) in LOWER_IS_BETTER


def extrapolation_key(name: str) -> tuple[str, float] | None:
    """``"loss@2x"`` → ``("loss", 2.0)``; ``"loss@2x[rope_ntk_dynamic]"`` (the same weights evaluated under another
    position encoding, ``TrainConfig.extrapolate_positions``) → ``("loss[rope_ntk_dynamic]", 2.0)``; None for a
    metric that is not a length-extrapolation one."""
    match = EXTRAPOLATION.fullmatch(name)
    if match is None:
        return None
    try:
        return match.group(1) + (match.group(3) or ""), float(match.group(2))
    except ValueError:  # "1.2.3" matches the pattern but is not a number
        return None


def ranking_metric(task: str, rows: Iterable[dict[str, Any]]) -> str:
    """The metric a task is ranked by: ``loss`` for ``lm`` or when finished runs report no accuracy; else accuracy.

    ``rows`` are the task's rows from ``Store.runs``; see the module docstring for the rule.
    """
    if task_ranking_metric(task) == "loss":  # lm, or a labelled variant of it ("lm[tokenizer=bpe]")
        return "loss"
    finals = [r["final"] for r in rows if r["task"] == task and r["status"] == "done"]
    if finals and not any("accuracy" in f for f in finals) and any("loss" in f for f in finals):
        return "loss"
    return "accuracy"


def _mean(values: Iterable[float]) -> float:
    values = [float(v) for v in values]
    return statistics.fmean(values) if values else math.nan


def _rank_value(value: float, metric: str) -> float:
    """A number to minimise: the best value first, nan last."""
    if value != value:
        return math.inf
    return value if lower_is_better(metric) else -value


def leaderboard(
    rows: list[dict[str, Any]],
    metric: str | None = None,
    *,
    curves: Curves | None = None,
    target: float | None = None,
    rank_by: str = "score",
) -> list[Entry]:
    """Group runs by (task, mechanism, position, width); choose the lr with the best mean metric over seeds.

    ``metric=None`` ranks each task by ``ranking_metric``; a name forces that metric for every task. Ties
    between learning rates go to the smaller one. Failed runs never choose but are counted. Intermediate rungs
    of a learning-rate search are left out (``final_rows``), but their learning rates count as tried (``lrs``,
    for the edge flag). Each entry carries its per-seed scores (its 95% t interval) and its paired test against
    the task's best, Holm-corrected over the task (``leaderboard_stats``).

    With ``curves`` (run_id → [(step, name, value)]), entries of an emergence task get the step their runs first
    reached the target accuracy (``target``, else each run's own, else 0.99). ``rank_by="emergence"`` then
    chooses their learning rate and ranks them by it (median step, "never" as +∞, then more seeds reached);
    other tasks, and every task without ``curves``, are ranked by the metric.
    """
    check_rank_by(rank_by)
    check_target(target)
    tried: dict[tuple, set[float]] = defaultdict(set)
    for row in rows:
        tried[_group(row)].add(row["lr"])
    if curves is not None:
        curves = with_rungs(rows, curves)  # a continued run's transition may lie in a rung below it
    rows = final_rows(rows)
    metrics = {task: metric or ranking_metric(task, rows) for task in {r["task"] for r in rows}}
    groups: dict[tuple, dict[float, list[dict]]] = defaultdict(lambda: defaultdict(list))
    failed: dict[tuple, int] = defaultdict(int)
    for row in rows:
        key = _group(row)
        if row["status"] == "done" and metrics[row["task"]] in row["final"]:
            groups[key][row["lr"]].append(row)
        elif row["status"] == "failed":
            failed[key] += 1
            groups.setdefault(key, defaultdict(list))
    out = []
    for key, by_lr in groups.items():
        chosen = metrics[key[0]]
        lrs = tuple(sorted(tried[key]))
        if not by_lr:
            out.append(Entry(*key, math.nan, math.nan, math.nan, 0, 0.0, 0.0, failed[key], metric=chosen, lrs=lrs))
            continue
        with_emergence = emerges(next(iter(by_lr.values()))[0])
        summaries: dict[float, EmergenceSummary] = {}
        if with_emergence and curves is not None:
            summaries = {lr: emergence_summary(runs, curves, target) for lr, runs in by_lr.items()}

        def order(item: tuple[float, list[dict]], chosen: str = chosen, summaries: dict = summaries) -> tuple:
            lr, runs = item
            value = _rank_value(_mean(r["final"][chosen] for r in runs), chosen)
            first = summaries[lr].sort_key if summaries and rank_by == "emergence" else ()
            return (*first, value, lr)

        lr, runs = min(by_lr.items(), key=order)
        names = sorted({name for r in runs for name in r["final"]})
        finals = {n: _mean(r["final"][n] for r in runs if n in r["final"]) for n in names}
        out.append(
            Entry(
                *key,
                best_lr=lr,
                accuracy=finals.get("accuracy", math.nan),
                loss=finals.get("loss", math.nan),
                seeds=len(runs),
                steps=finals.get("steps", 0.0),
                wall_s=_mean(r["wall_s"] or 0.0 for r in runs),
                failed=failed[key],
                metric=chosen,
                finals=finals,
                scores=seed_values(runs, chosen),
                seed_metrics={n: seed_values(runs, n) for n in names},
                lrs=lrs,
                emergence=summaries.get(lr),
                targets=tuple(sorted({run_target(r, target) for r in runs})) if summaries else (),
            )
        )
    for task in {e.task for e in out}:
        named = {entry_name(e): e for e in out if e.task == task}
        higher = not lower_is_better(next(iter(named.values())).metric)
        verdicts = versus_task_best({name: e.scores for name, e in named.items()}, higher)
        for name, e in named.items():
            e.versus = verdicts[name]
    out.sort(key=lambda e: (e.task, *_first_key(e, rank_by), _rank_value(e.score, e.metric), *_names(e)))
    return out


def _group(row: dict[str, Any]) -> tuple[str, str, str, int]:
    return (row["task"], row["mechanism"], row["position"], row["width"])


def _names(e: Entry) -> tuple[str, str, int]:
    return (e.mechanism, e.position, e.width)


def entry_name(e: Entry) -> str:
    """An entry's name within its task: ``mechanism / position / d<width>``."""
    return f"{e.mechanism} / {e.position} / d{e.width}"


def _first_key(e: Entry, rank_by: str) -> tuple[float, ...]:
    """The emergence sort key first in an emergence ranking (an entry without one: never, none reached)."""
    if rank_by != "emergence":
        return ()
    return e.emergence.sort_key if e.emergence is not None else (math.inf, 0.0)


COLUMNS = ("task", "mechanism", "position", "width", "best lr", "accuracy", "loss", "seeds", "steps", "s/run")
CI = "95% CI"  # the ranking metric's Student-t interval over seeds
VERSUS = "vs best"  # the paired test against the task's best, Holm-corrected
EMERGED = "emerged at"  # the median step the target accuracy was reached (reached / seeds)
EDGE_MARK = {"high": " ↑", "low": " ↓"}


def fmt(value: float, digits: int = 3) -> str:
    """A metric value for a table: fixed digits; '–' for nan."""
    if value != value:
        return "–"
    return f"{value:.{digits}f}"


def has_intervals(entries: Iterable[Entry]) -> bool:
    """Whether any entry has two or more finished seeds, so the table has interval and test columns."""
    return any(e.interval.has_interval for e in entries)


def _optional(entries: list[Entry]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The optional columns: (after the ranking metric, after the seeds)."""
    intervals = has_intervals(entries)
    after_seeds = ((VERSUS,) if intervals else ()) + ((EMERGED,) if any(e.emergence for e in entries) else ())
    return ((CI,) if intervals else ()), after_seeds


def cli_columns(entries: list[Entry]) -> tuple[str, ...]:
    """The command line's columns for ``entries`` of every task: accuracy and loss, the interval of each row's
    ranking metric, the test and emergence columns where some entry has them."""
    after_metric, after_seeds = _optional(entries)
    return (*COLUMNS[:7], *after_metric, "seeds", *after_seeds, *COLUMNS[-2:])


def leaderboard_columns(metric: str, entries: list[Entry] | None = None) -> tuple[str, ...]:
    """A task's leaderboard columns: its ranking metric first (its interval, then ppl after a loss), then the
    other one; the test and emergence columns where some of ``entries`` have them."""
    after_metric, after_seeds = _optional(entries or [])
    if metric == "accuracy":
        middle: tuple[str, ...] = ("accuracy", *after_metric, "loss")
    elif metric == "loss":
        middle = ("loss", *after_metric, "ppl", "accuracy")
    else:
        middle = (metric, *after_metric, "accuracy", "loss")
    return (*COLUMNS[:5], *middle, "seeds", *after_seeds, *COLUMNS[-2:])


def interval_cell(interval: Interval) -> str:
    """``[0.781, 0.843]``; ``–`` without an interval."""
    if not interval.has_interval:
        return "–"
    return f"[{fmt(interval.low)}, {fmt(interval.high)}]"


def lr_cell(e: Entry) -> str:
    """The best learning rate, marked ↑ / ↓ at the largest / smallest tried."""
    if e.best_lr != e.best_lr:
        return "–"
    edge = e.lr_edge
    return f"{e.best_lr:g}" + (EDGE_MARK[edge] if edge else "")


def cells(e: Entry, columns: Iterable[str]) -> list[str]:
    """One entry's cells under ``columns`` (``cli_columns`` or ``leaderboard_columns``); the failed count goes
    next to the ranking metric (next to accuracy when that column is not shown)."""
    columns = tuple(columns)
    values = {
        "task": e.task,
        "mechanism": e.mechanism,
        "position": e.position,
        "width": str(e.width),
        "best lr": lr_cell(e),
        "accuracy": fmt(e.accuracy),
        "loss": fmt(e.loss),
        "ppl": fmt(e.ppl, 2),
        e.metric: fmt(e.score),
        CI: interval_cell(e.interval),
        "seeds": str(e.seeds),
        VERSUS: versus_cell(e.versus),
        EMERGED: emergence_cell(e.emergence),
        "steps": f"{e.steps:.0f}",
        "s/run": f"{e.wall_s:.0f}",
    }
    if e.failed:
        values[e.metric if e.metric in columns else "accuracy"] += f" ({e.failed} failed)"
    return [values[c] for c in columns]


def leaderboard_caption(entries: list[Entry], scope: str = "task") -> str:
    """What a leaderboard's numbers are: the mean, the interval and test (or that it is built on one seed), the
    edge marks and the emergence target, as far as ``entries`` use them. ``scope`` names the family Holm
    corrects over ("task" for a task's table)."""
    if has_intervals(entries):
        parts = [
            f"Mean over seeds at the best learning rate. {CI}: of the ranking metric, Student t over seeds, mean ± "
            f"t(0.975, n − 1)·s/√n, clipped to the metric's range (no interval with one seed). {VERSUS}: paired "
            f"t-test of that metric against the {scope}'s best mean, over the seeds both finished, p Holm-corrected "
            f"over the {scope}'s comparisons; "
            "tied: cannot be told apart at α = 0.05."
        ]
    else:
        parts = ["One seed per row: no interval and no test (one run cannot tell the mechanism from the seed)."]
    if any(e.lr_edge for e in entries):
        parts.append("↑ / ↓: the best learning rate is the largest / smallest tried; the optimum may lie beyond.")
    targets = [t for e in entries if e.emergence for t in e.targets]
    if targets:
        parts.append(
            f"{EMERGED}: the first evaluation step with accuracy ≥ {targets_text(targets)}, median over seeds "
            "(never reached counts as +∞), and the seeds that reached it."
        )
    return " ".join(parts)


def md_cell(text: str) -> str:
    """Text safe inside a markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown_table(entries: list[Entry]) -> str:
    """The command line's leaderboard columns as a markdown table."""
    columns = cli_columns(entries)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(md_cell(c) for c in cells(e, columns)) + " |" for e in entries]
    return "\n".join(lines)
