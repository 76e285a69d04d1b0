"""How the command line shows a learning-rate search: its plan, each rung as it is ranked, the winners.

The search itself is ``attnlab.runner.search``; this module only prints what its plans say.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import Console
from rich.markup import escape
from rich.table import Table

if TYPE_CHECKING:
    from attnlab.runner.search import SearchGroup
    from attnlab.stats.halving import HalvingPlan, LrScore

EDGE_HINT = {"low": "low edge: widen the grid down", "high": "high edge: widen the grid up"}


def describe_search(groups: list[SearchGroup]) -> str:
    """One line per distinct search: grid, seeds, rungs (steps), learning rates kept, and the steps it costs."""
    lines = []
    for spec in dict.fromkeys(g.spec for g in groups):
        n = sum(g.spec == spec for g in groups)
        grid = ", ".join(f"{lr:g}" for lr in spec.lrs)
        full = len(spec.lrs) * len(spec.seeds) * spec.max_steps
        lines.append(
            f"search: {n} group(s) × learning rates [{grid}] × seeds {list(spec.seeds)}; rungs of "
            f"{' / '.join(map(str, spec.budgets))} steps keep {' → '.join(map(str, spec.rung_sizes))} learning "
            f"rates (η={spec.eta}): {spec.planned_steps:,} steps per group instead of {full:,}"
        )
    return "\n".join(lines)


def _score(score: LrScore) -> str:
    failed = f" ({score.n_failed} failed)" if score.n_failed else ""
    return f"{score.lr:g} {score.mean:.3f}{failed}"


class RungPrinter:
    """Prints each rung once, when it has been ranked: its learning rates best first and those it keeps."""

    def __init__(self, console: Console):
        self.console = console
        self.shown: set[tuple[str, int]] = set()

    def __call__(self, plans: list[tuple[SearchGroup, HalvingPlan]]) -> None:
        for group, plan in plans:
            for rung in plan.rungs:
                if rung.ranking is None or (group.label, rung.index) in self.shown:
                    continue
                self.shown.add((group.label, rung.index))
                later = plan.rungs[rung.index + 1].lrs if rung.index + 1 < len(plan.rungs) else ()
                kept = f"keeps {', '.join(f'{lr:g}' for lr in later)}" if later else "last rung"
                ranked = ", ".join(_score(s) for s in rung.ranking)
                self.console.print(
                    escape(
                        f"  search {group.label}: rung {rung.index} ({rung.steps} steps, {group.metric}) ranked "
                        f"{ranked}; {kept}"
                    )
                )


def winners_table(plans: list[tuple[SearchGroup, HalvingPlan]]) -> Table:
    """Per group: the best learning rate, its metric (mean over seeds at the last rung) and whether it is at an
    edge of the grid (the optimum may lie beyond it)."""
    table = Table(title="learning-rate search: the best learning rate per group", title_justify="left")
    for col in ("task", "mechanism", "position", "width", "best lr", "metric", "mean", "seeds", "edge"):
        table.add_column(col, justify="left" if col in ("task", "mechanism", "position", "edge") else "right")
    for group, plan in plans:
        t = group.template
        best = plan.rungs[-1].ranking[0] if plan.finished and plan.rungs[-1].ranking else None
        edge = EDGE_HINT.get(plan.best_edge or "", "") if best else "unfinished"
        table.add_row(
            *(escape(c) for c in (t.task.name, t.mechanism, t.position)),
            str(t.model.d_model),
            f"{best.lr:g}" if best else "–",
            group.metric,
            f"{best.mean:.3f}" if best else "–",
            str(len(group.spec.seeds) - best.n_failed) if best else "–",
            edge,
        )
    return table


def status_table(plans: list[tuple[SearchGroup, HalvingPlan]]) -> Table:
    """Per group and rung: steps, learning rates, results in / trials, and the ranking once complete."""
    table = Table(title="learning-rate search: status from the database", title_justify="left")
    for col in ("group", "rung", "steps", "results", "ranking (best first)"):
        table.add_column(col, justify="right" if col in ("rung", "steps", "results") else "left")
    for group, plan in plans:
        pending = {t.key for t in plan.pending}
        for rung in plan.rungs:
            have = sum(t.key not in pending for t in rung.trials)
            ranking = ", ".join(_score(s) for s in rung.ranking) if rung.ranking else "waiting"
            table.add_row(
                escape(group.label), str(rung.index), str(rung.steps), f"{have}/{len(rung.trials)}", escape(ranking)
            )
        if plan.finished:
            table.add_row(
                escape(group.label),
                "",
                "",
                "",
                f"best {plan.best_lr:g}" + (f" ({EDGE_HINT[plan.best_edge]})" if plan.best_edge else ""),
            )
    return table
