"""Two mechanisms side by side (``attnlab compare DB A B``): per task, the paired difference A − B over the seeds
both finished, its 95% Student-t interval and the paired t-test's two-sided p-value (``stats.paired_comparison``).

Each mechanism is taken at its own best learning rate (the leaderboard's choice: the best mean over seeds), or
both at a given one. Pairing by seed removes what the two runs of a seed share (the same data and the same
initialisation), so the difference is measured against the seed-to-seed spread of the difference, not of each
mechanism (Student 1908). The best learning rates are chosen on the same runs the difference is measured on,
which favours each mechanism a little; with a fixed ``lr`` the comparison has no such selection. The p-values
are also given Holm-corrected over the compared tasks (Holm 1979), for reading several tasks at once.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

from attnlab.errors import ConfigError
from attnlab.report.leaderboard_stats import LEVEL, final_rows, format_p, seed_values
from attnlab.report.tables import fmt, leaderboard
from attnlab.stats import PairedComparison, holm, paired_comparison

Group = tuple[str, str, int]  # task, position, width


@dataclass(frozen=True)
class MechanismComparison:
    """A − B on one (task, position, width): each at its learning rate, paired over their shared seeds."""

    task: str
    position: str
    width: int
    metric: str
    lr_a: float
    lr_b: float
    comparison: PairedComparison
    p_holm: float = math.nan  # Holm-corrected over the compared groups


@dataclass(frozen=True)
class Comparison:
    """Every group both mechanisms ran, and those only one of them ran (``task / position / d<width>``)."""

    a: str
    b: str
    groups: tuple[MechanismComparison, ...]
    only_a: tuple[str, ...]
    only_b: tuple[str, ...]


def compare_mechanisms(
    rows: list[dict[str, Any]], a: str, b: str, *, metric: str | None = None, lr: float | None = None
) -> Comparison:
    """Compare mechanisms ``a`` and ``b`` (names as in the leaderboard) on every (task, position, width) both
    ran. ``metric`` forces one metric for every task (default: each task's ``ranking_metric``); ``lr`` takes
    both at that learning rate instead of each at its best.

    One-line ``ConfigError``s: an unknown mechanism (naming those present), A = B, a metric or learning rate
    neither has, and no seed that both finished anywhere.
    """
    rows = final_rows(rows)
    present = sorted({r["mechanism"] for r in rows})
    for field, name in (("A", a), ("B", b)):
        if name not in present:
            raise ConfigError(field, name, "no runs of this mechanism", present or "none: no runs")
    if a == b:
        raise ConfigError("B", b, "is A itself", [m for m in present if m != a] or "another mechanism")
    mine = [r for r in rows if r["mechanism"] in (a, b) and r["status"] == "done"]
    if metric is not None and not any(metric in r["final"] for r in mine):
        reported = sorted({m for r in mine for m in r["final"]})
        raise ConfigError("metric", metric, f"no finished run of {a} or {b} reports it", reported or "none")
    if lr is not None and not any(r["lr"] == lr for r in mine):
        raise ConfigError("lr", lr, f"no finished run of {a} or {b} at this learning rate", _lrs(mine))
    entries = leaderboard(rows, metric)  # the leaderboard's choice of metric and best learning rate
    metrics = {e.task: e.metric for e in entries}
    best = {(e.task, e.mechanism, e.position, e.width): e.best_lr for e in entries}
    runs: dict[tuple[str, Group], dict[float, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for r in mine:
        runs[(r["mechanism"], (r["task"], r["position"], r["width"]))][r["lr"]].append(r)
    groups_a = {g for m, g in runs if m == a}
    groups_b = {g for m, g in runs if m == b}
    if not groups_a & groups_b:
        ran = ", ".join(_names(groups_a)) or "nothing that finished"
        raise ConfigError("B", b, f"finished no task, position and width that {a} finished", f"{a} finished {ran}")
    out = []
    for group in sorted(groups_a & groups_b):
        task = group[0]
        lr_a = lr if lr is not None else best[(task, a, *group[1:])]
        lr_b = lr if lr is not None else best[(task, b, *group[1:])]
        scores_a = seed_values(runs[(a, group)].get(lr_a, []), metrics[task])
        scores_b = seed_values(runs[(b, group)].get(lr_b, []), metrics[task])
        comparison = paired_comparison(scores_a, scores_b, names=(a, b), level=LEVEL)
        out.append(MechanismComparison(*group, metrics[task], lr_a, lr_b, comparison))
    if not any(c.comparison.seeds for c in out):
        raise ConfigError("B", b, f"shares no finished seed with {a} on any task ({_seeds_text(mine, a, b)})")
    adjusted = holm([c.comparison.p_value for c in out])
    groups = tuple(replace(c, p_holm=p) for c, p in zip(out, adjusted, strict=True))
    return Comparison(a, b, groups, _names(groups_a - groups_b), _names(groups_b - groups_a))


def _lrs(rows: Iterable[dict[str, Any]]) -> list[str]:
    return [f"{v:g}" for v in sorted({r["lr"] for r in rows})]


def _names(groups: Iterable[Group]) -> tuple[str, ...]:
    return tuple(f"{t} / {p} / d{w}" for t, p, w in sorted(groups))


def _seeds_text(rows: list[dict[str, Any]], a: str, b: str) -> str:
    """``softmax: seeds 0, 1; sigmoid: seeds 2``."""
    parts = []
    for name in (a, b):
        seeds = sorted({r["seed"] for r in rows if r["mechanism"] == name})
        parts.append(f"{name}: seeds {', '.join(map(str, seeds)) or 'none finished'}")
    return "; ".join(parts)


COMPARE_COLUMNS = ("task", "position", "width", "metric", "lr A", "lr B", "seeds", "A − B", "95% CI", "p", "p Holm")


def comparison_cells(c: MechanismComparison) -> list[str]:
    """One group's cells under ``COMPARE_COLUMNS``."""
    interval = c.comparison.interval
    ci = f"[{fmt(interval.low)}, {fmt(interval.high)}]" if interval.has_interval else "–"
    return [
        c.task,
        c.position,
        str(c.width),
        c.metric,
        f"{c.lr_a:g}",
        f"{c.lr_b:g}",
        str(len(c.comparison.seeds)),
        fmt(c.comparison.mean_difference),
        ci,
        format_p(c.comparison.p_value),
        format_p(c.p_holm),
    ]


def comparison_caption(result: Comparison, lr: float | None = None) -> str:
    """What the table's numbers are, and what was not compared."""
    at = f"both at lr {lr:g}" if lr is not None else "each at its best learning rate (best mean over seeds)"
    parts = [
        f"{result.a} − {result.b}, {at}, paired over the seeds both finished: the mean difference, its 95% Student-t "
        "interval over seeds, and the paired t-test's two-sided p-value (raw, and Holm-corrected over the rows). "
        "With one shared seed there is no interval and no test. For a loss, lower is better: a negative "
        f"difference favours {result.a}."
    ]
    if result.only_a:
        parts.append(f"Only {result.a} ran: {', '.join(result.only_a)}.")
    if result.only_b:
        parts.append(f"Only {result.b} ran: {', '.join(result.only_b)}.")
    return " ".join(parts)
