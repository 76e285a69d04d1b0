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
from dataclasses import dataclass, field
from typing import Any

LOSS_TASKS = frozenset({"lm"})  # tasks ranked by loss whatever else they report
LOWER_IS_BETTER = frozenset({"loss", "ppl", "perplexity"})
EXTRAPOLATION = re.compile(r"(\w+)@([\d.]+)x")


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

    @property
    def score(self) -> float:
        """The ranking metric's value (nan when no run of the group finished)."""
        return self.finals.get(self.metric, math.nan)

    @property
    def ppl(self) -> float:
        """Perplexity exp(loss), with the loss in nats per scored token."""
        return safe_exp(self.loss)


def safe_exp(value: float) -> float:
    """exp(value); inf when it overflows, nan for nan."""
    try:
        return math.exp(value)
    except OverflowError:
        return math.inf


def lower_is_better(metric: str) -> bool:
    """Whether smaller values of ``metric`` are better (loss, perplexity, and their @Nx variants)."""
    parsed = extrapolation_key(metric)
    return (parsed[0] if parsed else metric) in LOWER_IS_BETTER


def extrapolation_key(name: str) -> tuple[str, float] | None:
    """``"loss@2x"`` → ``("loss", 2.0)``; None for a metric that is not a length-extrapolation one."""
    match = EXTRAPOLATION.fullmatch(name)
    if match is None:
        return None
    try:
        return match.group(1), float(match.group(2))
    except ValueError:  # "1.2.3" matches the pattern but is not a number
        return None


def ranking_metric(task: str, rows: Iterable[dict[str, Any]]) -> str:
    """The metric a task is ranked by: ``loss`` for ``lm`` or when finished runs report no accuracy; else accuracy.

    ``rows`` are the task's rows from ``Store.runs``; see the module docstring for the rule.
    """
    if task.split("[", 1)[0] in LOSS_TASKS:  # "lm[tokenizer=bpe]": a labelled variant of lm
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


def leaderboard(rows: list[dict[str, Any]], metric: str | None = None) -> list[Entry]:
    """Group runs by (task, mechanism, position, width); choose the lr with the best mean metric over seeds.

    ``metric=None`` ranks each task by ``ranking_metric``; a name forces that metric for every task. Ties
    between learning rates go to the smaller one. Failed runs never choose but are counted.
    """
    metrics = {task: metric or ranking_metric(task, rows) for task in {r["task"] for r in rows}}
    groups: dict[tuple, dict[float, list[dict]]] = defaultdict(lambda: defaultdict(list))
    failed: dict[tuple, int] = defaultdict(int)
    for row in rows:
        key = (row["task"], row["mechanism"], row["position"], row["width"])
        if row["status"] == "done" and metrics[row["task"]] in row["final"]:
            groups[key][row["lr"]].append(row)
        elif row["status"] == "failed":
            failed[key] += 1
            groups.setdefault(key, defaultdict(list))
    out = []
    for key, by_lr in groups.items():
        chosen = metrics[key[0]]
        if not by_lr:
            out.append(Entry(*key, math.nan, math.nan, math.nan, 0, 0.0, 0.0, failed[key], metric=chosen))
            continue

        def order(item: tuple[float, list[dict]], chosen: str = chosen) -> tuple[float, float]:
            lr, runs = item
            return _rank_value(_mean(r["final"][chosen] for r in runs), chosen), lr

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
            )
        )
    out.sort(key=lambda e: (e.task, _rank_value(e.score, e.metric), e.mechanism, e.position, e.width))
    return out


COLUMNS = ("task", "mechanism", "position", "width", "best lr", "accuracy", "loss", "seeds", "steps", "s/run")


def fmt(value: float, digits: int = 3) -> str:
    """A metric value for a table: fixed digits; '–' for nan."""
    if value != value:
        return "–"
    return f"{value:.{digits}f}"


def entry_cells(e: Entry) -> list[str]:
    """The cells of ``COLUMNS`` for one entry (the command line's leaderboard); the failed count goes next to
    the ranking metric."""
    failed = f" ({e.failed} failed)" if e.failed else ""
    return [
        e.task,
        e.mechanism,
        e.position,
        str(e.width),
        f"{e.best_lr:g}",
        fmt(e.accuracy) + (failed if e.metric != "loss" else ""),
        fmt(e.loss) + (failed if e.metric == "loss" else ""),
        str(e.seeds),
        f"{e.steps:.0f}",
        f"{e.wall_s:.0f}",
    ]


def leaderboard_columns(metric: str) -> tuple[str, ...]:
    """A task's leaderboard columns: its ranking metric first (with ppl after a loss), then the other one."""
    if metric == "accuracy":
        return COLUMNS
    if metric == "loss":
        middle: tuple[str, ...] = ("loss", "ppl", "accuracy")
    else:
        middle = (metric, "accuracy", "loss")
    return (*COLUMNS[:5], *middle, *COLUMNS[-3:])


def leaderboard_cells(e: Entry) -> list[str]:
    """The cells of ``leaderboard_columns(e.metric)`` for one entry."""
    failed = f" ({e.failed} failed)" if e.failed else ""
    values = {
        "accuracy": fmt(e.accuracy),
        "loss": fmt(e.loss),
        "ppl": fmt(e.ppl, 2),
        e.metric: fmt(e.score),
    }
    values[e.metric] += failed
    cells = [e.task, e.mechanism, e.position, str(e.width), f"{e.best_lr:g}" if e.best_lr == e.best_lr else "–"]
    middle = leaderboard_columns(e.metric)[5:-3]
    return [*cells, *(values[c] for c in middle), str(e.seeds), f"{e.steps:.0f}", f"{e.wall_s:.0f}"]


def md_cell(text: str) -> str:
    """Text safe inside a markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown_table(entries: list[Entry]) -> str:
    """The command line's leaderboard columns as a markdown table."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(md_cell(c) for c in entry_cells(e)) + " |" for e in entries]
    return "\n".join(lines)
