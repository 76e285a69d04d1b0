"""The learning-rate search of a sweep with ``search``: successive halving run on the sweep's backends.

Each (task, mechanism, position, width) of the sweep is a ``SearchGroup``: the search's grid × the sweep's seeds,
planned by ``attnlab.stats.halving.plan_halving`` (its module docstring has the method and its sources) from the
results in the database, ranked by the evaluation loss (``SearchConfig.rank_by``; or the task's metric,
``task_ranking_metric``: accuracy, or the loss of a language model). ``run_search`` loops: plan every group
from the database, run every group's pending trials in one batch on the backend (``run_local`` or ``run_ray``,
through ``run_batch``), repeat until every plan is finished.

A trial is an ordinary run: its config is the group's with its learning rate, seed and ``train.stop_at`` (the
rung's budget; none at the last rung, so the search's final runs are the sweep's plain runs of that learning
rate). An intermediate rung's run stores its whole training state next to the database, and the driver hands it to
the run of the next rung, which trains on from it (``Store.resume_state``): a promoted run continues, it does not
restart, and its results and curves (from step 1) are bitwise those of a run that never stopped (same machine and
thread count). When that state file is missing (deleted, or another machine's database), the run trains from
scratch, deterministically, to the same result: it costs time, never correctness. Between rounds, the states no
planned run will continue from (runs not promoted, or whose continuation is done) are deleted; the runs' weights
stay.

Resumable: a plan is a pure function of the results, and the database is the only record of them. Killed at any
point (SIGKILL included), the same command recomputes every plan from the database and runs only what is missing:
a finished run is never repeated (its id is a hash of its config, and it is ``done``), a run that was under way is
run again. A failed run (a diverged learning rate) is a result of the search, NaN: it is not retried, since a
deterministic run fails the same way again and the rungs after it were planned on it. Runs of the database that the
plan does not schedule (another grid, other seeds) are left alone and do not enter the plan.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from attnlab.runner.config import RunConfig, SearchConfig, Sweep
from attnlab.runner.store import Store
from attnlab.runner.suite import Suite
from attnlab.stats.halving import HalvingPlan, HalvingSpec, ResultKey, plan_halving
from attnlab.tasks.base import task_ranking_metric

RunBatch = Callable[[Sequence[RunConfig]], object]  # run these runs and record them (run_local, run_ray)
OnPlans = Callable[[list[tuple["SearchGroup", HalvingPlan]]], None]


@dataclass
class SearchGroup:
    """One (task, mechanism, position, width) of a sweep: its runs differ only in learning rate, seed and stop."""

    template: RunConfig  # a run of the group at train.steps (its lr and seed are replaced)
    spec: HalvingSpec
    metric: str  # the final metric that ranks learning rates
    _runs: dict[ResultKey, RunConfig] = field(default_factory=dict, repr=False)

    @property
    def label(self) -> str:
        """``mqar softmax / rope d64``: how the command line names the group."""
        t = self.template
        return f"{t.task.name} {t.mechanism} / {t.position} d{t.model.d_model}"

    def run(self, lr: float, seed: int, steps: int) -> RunConfig:
        """The run of trial (lr, seed, steps): the group's config stopped at ``steps`` of its schedule."""
        key = (lr, seed, steps)
        if key not in self._runs:
            self._runs[key] = self.template.stopped_at(steps, lr=lr, seed=seed)
        return self._runs[key]

    def results(self, store: Store) -> dict[ResultKey, float]:
        """Every result the search could use that the database holds: (lr, seed, steps) → the metric (NaN for a
        failed run, or a finished one without the metric)."""
        keys = [(lr, seed, steps) for lr in self.spec.lrs for seed in self.spec.seeds for steps in self.spec.budgets]
        ids = {self.run(*key).run_id: key for key in keys}
        out: dict[ResultKey, float] = {}
        for run_id, (status, final) in store.outcomes(ids).items():
            if status in ("done", "failed"):
                value = final.get(self.metric, math.nan) if status == "done" else math.nan
                out[ids[run_id]] = float(value)
        return out

    def plan(self, store: Store) -> HalvingPlan:
        """The group's plan from the database: results are fed rung by rung, so runs the plan does not schedule
        (another search's, in a shared database) are never part of it."""
        known = self.results(store)
        results: dict[ResultKey, float] = {}
        while True:
            plan = plan_halving(self.spec, results)
            scheduled = {t.key for rung in plan.rungs for t in rung.trials}
            new = {key: known[key] for key in scheduled - results.keys() if key in known}
            if not new:
                return plan
            results.update(new)

    def drop_spent_states(self, store: Store, plan: HalvingPlan) -> None:
        """Delete the training states no run of the plan will continue from: those of a ranked rung's runs whose
        continuation is not pending (not promoted, or already run). A state is three times a model's weights
        (weights and AdamW's two moments); the runs' weights themselves stay."""
        pending = {t.key for t in plan.pending}
        for rung, after in zip(plan.rungs, plan.rungs[1:], strict=False):
            for trial in rung.trials:
                if (trial.lr, trial.seed, after.steps) not in pending:
                    store.drop_state(self.run(*trial.key).run_id)

    def planned_runs(self) -> int:
        """Runs of the whole search when none fails: Σ over rungs of learning rates × seeds."""
        return sum(self.spec.rung_sizes) * len(self.spec.seeds)


def _parts(sweep: Sweep | Suite) -> list[tuple[Sweep, str]]:
    """(part, the name its runs are tagged with): a sweep is its own part; a suite's parts carry its name."""
    return [(sweep, sweep.name)] if isinstance(sweep, Sweep) else [(p, sweep.name) for p in sweep.parts]


def has_search(sweep: Sweep | Suite) -> bool:
    """Whether any part of ``sweep`` searches its learning rates."""
    return any(part.search is not None for part, _ in _parts(sweep))


def search_groups(sweep: Sweep | Suite) -> list[SearchGroup]:
    """The search groups of every part with ``search``, in the sweep's order."""
    groups: dict[str, SearchGroup] = {}
    for part, tag in _parts(sweep):
        if part.search is None:
            continue
        for run in part.grid_runs():
            run = run.model_copy(update={"sweep": tag})
            key = json.loads(run.canonical_json())
            key.pop("seed")
            key["train"].pop("lr")
            group = json.dumps(key, sort_keys=True)
            if group not in groups:
                groups[group] = SearchGroup(run, _spec(part.search, part, run), search_metric(part.search, run))
    return list(groups.values())


def _spec(search: SearchConfig, part: Sweep, run: RunConfig) -> HalvingSpec:
    return HalvingSpec(
        lrs=search.grid,
        seeds=tuple(part.seeds),
        min_steps=search.min_steps,
        max_steps=part.train.steps,
        eta=search.eta,
        higher_is_better=search_metric(search, run) != "loss",
    )


def search_metric(search: SearchConfig, run: RunConfig) -> str:
    """The final metric that ranks a group's learning rates: ``loss``, or the task's (``rank_by="task"``)."""
    return "loss" if search.rank_by == "loss" else task_ranking_metric(run.task.name)


def fixed_runs(sweep: Sweep | Suite) -> list[RunConfig]:
    """The runs of the parts without a search (a suite may mix both)."""
    return [
        run.model_copy(update={"sweep": tag})
        for part, tag in _parts(sweep)
        if part.search is None
        for run in part.runs()
    ]


def plans(groups: Sequence[SearchGroup], store: Store) -> list[tuple[SearchGroup, HalvingPlan]]:
    """Every group's plan from the database."""
    return [(group, group.plan(store)) for group in groups]


def run_search(
    sweep: Sweep | Suite, store: Store, run_batch: RunBatch, on_plans: OnPlans | None = None
) -> list[tuple[SearchGroup, HalvingPlan]]:
    """Run the search (and the runs of a suite's parts without one) until every group's plan is finished.

    Each round plans every group from ``store`` (``on_plans`` sees the plans), then hands every pending trial of
    every group to ``run_batch`` at once, so the backend runs as many in parallel as it has workers. Returns the
    finished plans (``plan.best_lr``, ``plan.best_edge``). See the module docstring for resuming.
    """
    groups = search_groups(sweep)
    todo = fixed_runs(sweep)
    previous: set[str] = set()
    while True:
        current = plans(groups, store)
        for group, plan in current:
            group.drop_spent_states(store, plan)
        if on_plans is not None:
            on_plans(current)
        todo += [group.run(*trial.key) for group, plan in current for trial in plan.pending]
        if not todo:
            return current
        ids = {run.run_id for run in todo}
        if ids == previous:  # the backend returned without recording them: never loop forever
            raise RuntimeError(f"the search made no progress: {len(ids)} runs still pending after a round")
        previous = ids
        run_batch(todo)
        todo = []
