"""Run a claim's experiment (resuming from the results database) and decide its verdict."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from attnlab.claims.base import Claim, FunctionExperiment, Measurement, SweepExperiment, seeded_effect
from attnlab.claims.verdict import Effect, Verdict, decide
from attnlab.errors import ConfigError
from attnlab.report.leaderboard_stats import final_rows
from attnlab.report.tables import leaderboard
from attnlab.runner.config import RunConfig
from attnlab.runner.local import run_local
from attnlab.runner.search import fixed_runs, has_search, plans, run_search, search_groups
from attnlab.runner.store import Store

OnDone = Callable[[RunConfig, object], None]


@dataclass(frozen=True)
class ClaimResult:
    """A claim's verdict with what it rests on: the measurement (per-seed values and details) and its wall time
    in this run (0 when everything came from the database)."""

    claim: Claim
    verdict: Verdict
    measurement: Measurement
    wall_s: float


def sweep_runs(experiment: SweepExperiment) -> list[RunConfig]:
    sweep = experiment.sweep
    return fixed_runs(sweep) if has_search(sweep) else sweep.runs()


def sweep_run_ids(experiment: SweepExperiment) -> set[str]:
    """Every run the experiment may have: its fixed runs and every trial of its search at every rung. Runs are
    found by id, not by sweep name: two claims whose sweeps share a configuration share its runs."""
    ids = {run.run_id for run in sweep_runs(experiment)}
    for group in search_groups(experiment.sweep):
        spec = group.spec
        ids |= {group.run(lr, s, steps).run_id for lr in spec.lrs for s in spec.seeds for steps in spec.budgets}
    return ids


def run_experiment(
    experiment: SweepExperiment, store: Store, workers: int | None, threads: int | None, on_done: OnDone | None
) -> None:
    """Every run of the sweep that is not done yet (with its learning-rate search, if it has one)."""
    store.enqueue(sweep_runs(experiment))

    def run_batch(batch: list[RunConfig]) -> None:
        run_local(batch, store, workers=workers, threads=threads, on_done=on_done)

    if has_search(experiment.sweep):
        run_search(experiment.sweep, store, run_batch)
    else:
        run_batch(sweep_runs(experiment))


def sweep_measurement(experiment: SweepExperiment, store: Store) -> Measurement:
    """Each arm's metric per seed at its best learning rate, and the effect per shared seed."""
    tag = experiment.sweep.name
    runs = store.runs(run_ids=sweep_run_ids(experiment))
    if experiment.derive is not None:
        rows = [r for r in final_rows(runs) if r["status"] == "done"]
        return experiment.derive(rows, {r["run_id"]: store.curves(r["run_id"]) for r in rows})
    assert experiment.a is not None
    entries = leaderboard(runs, metric=experiment.metric)
    arms = [experiment.a] + ([experiment.b] if experiment.b is not None else [])
    chosen = []
    for arm in arms:
        found = [e for e in entries if arm.matches(e.task, e.mechanism, e.position)]
        if len(found) != 1:
            have = sorted({f"{e.mechanism} / {e.position} on {e.task}" for e in entries})
            raise ConfigError("arm", arm.describe(), f"matches {len(found)} leaderboard rows of {tag}", have)
        chosen.append(found[0])
    per_arm = [dict(e.scores) for e in chosen]
    if len(per_arm) == 1:
        values = per_arm[0]
    else:
        a, b = per_arm
        shared = sorted(set(a) & set(b))
        if experiment.combine == "ratio":
            values = {s: a[s] / b[s] if b[s] else math.nan for s in shared}
        else:
            values = {s: a[s] - b[s] for s in shared}
    rows: list[dict[str, object]] = [
        {"arm": arm.describe(), "best lr": e.best_lr, "seeds": e.seeds, "mean": e.score, "per seed": e.scores}
        for arm, e in zip(arms, chosen, strict=True)
    ]
    series = {
        arm.describe(): [(float(s), v) for s, v in sorted(e.scores.items())]
        for arm, e in zip(arms, chosen, strict=True)
    }
    return Measurement(values=values, rows=rows, series=series, xlabel="seed", ylabel=experiment.metric)


def measure(
    claim: Claim, store: Store, *, workers: int | None = None, threads: int | None = None, on_done: OnDone | None = None
) -> ClaimResult:
    """Run what is missing of ``claim``'s experiment, then decide its verdict. The time it takes is kept in the
    database as a sitting of ``claim:NAME`` (touched after every finished run, so a killed sitting keeps what it
    spent up to its last run): ``claim_time`` adds a claim's sittings up, a run resumed in several sittings
    included."""
    t0 = time.perf_counter()
    experiment = claim.experiment
    sitting = store.begin_sitting(sitting_name(claim.name), workers, threads)

    def done(run: RunConfig, result: object) -> None:
        store.touch_sitting(sitting)
        if on_done is not None:
            on_done(run, result)

    try:
        if isinstance(experiment, SweepExperiment):
            run_experiment(experiment, store, workers, threads, done)
            measurement = sweep_measurement(experiment, store)
        else:
            key = experiment.key or claim.name
            kept = store.claim_result(key, experiment.version)
            if kept is None:
                stored = experiment.run()
                store.put_claim_result(key, experiment.version, stored.to_json())
            else:
                stored = Measurement.from_json(kept)
            measurement = experiment.measurement_of(stored)
    except BaseException:
        store.touch_sitting(sitting, "interrupted")
        raise
    store.touch_sitting(sitting, "finished")
    return ClaimResult(claim, decide(claim.rule, effect_of(claim, measurement)), measurement, time.perf_counter() - t0)


SITTING_PREFIX = "claim:"


def sitting_name(claim: str) -> str:
    """The name under which a claim's sittings are kept in the ``sittings`` table."""
    return f"{SITTING_PREFIX}{claim}"


def claim_time(claim: str, store: Store) -> float | None:
    """The wall time ``attnlab claims run`` spent on ``claim`` over all its sittings (seconds), or None when it
    never ran here."""
    sittings = store.sittings(sitting_name(claim))
    return sum(s["wall_s"] for s in sittings) if sittings else None


def claim_times(claims: list[Claim], store: Store) -> dict[str, float]:
    """Each claim's wall time over all its sittings on ``store``, for the claims that have run there."""
    return {c.name: t for c in claims if (t := claim_time(c.name, store)) is not None}


def effect_of(claim: Claim, measurement: Measurement) -> Effect:
    if measurement.exact is not None:
        return Effect.of_value(measurement.exact)
    return seeded_effect(measurement.values, claim.rule.level)


def recorded(claim: Claim, store: Store) -> ClaimResult | None:
    """The claim's verdict from what the database already holds (nothing is run), or None when its experiment
    has not finished."""
    experiment = claim.experiment
    if isinstance(experiment, FunctionExperiment):
        kept = store.claim_result(experiment.key or claim.name, experiment.version)
        if kept is None:
            return None
        measurement = experiment.measurement_of(Measurement.from_json(kept))
    else:
        ids = {run.run_id for run in sweep_runs(experiment)}
        if any(store.status(run_id) != "done" for run_id in ids) or _search_unfinished(experiment, store):
            return None
        measurement = sweep_measurement(experiment, store)
    return ClaimResult(claim, decide(claim.rule, effect_of(claim, measurement)), measurement, 0.0)


def _search_unfinished(experiment: SweepExperiment, store: Store) -> bool:
    if not has_search(experiment.sweep):
        return False
    return any(not plan.finished for _, plan in plans(search_groups(experiment.sweep), store))
