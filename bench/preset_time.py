"""How long a sweep (a preset or a sweep file) will take, from a short timed pilot of each of its configurations.

    nice -n 5 python bench/preset_time.py positions --steps 150 --workers 2

Every distinct configuration of the sweep's runs (seeds share one: a seed changes the numbers, not the work) trains
``--steps`` steps with its model, task and batch size (after an untimed warm-up of 10 steps of the first one), then
its evaluation set is scored once and its length-extrapolation sets once. Each is timed in CPU time (this process,
one torch thread): on a machine that other jobs share, CPU time is what the work costs, while wall time is what it
waits. A run's estimate is steps × (CPU per step) + evaluations × (CPU per evaluation) + extrapolation; the sweep's
is the sum over its runs divided by ``--workers`` (one thread each, a core each). Not counted: starting the worker
processes, building each run and writing its results, a few seconds a run, and the tail of the queue, where one
worker may finish its last run alone.

CPU time per step measured while other processes share the cores runs higher than on idle cores (they share caches
and memory bandwidth), so on a loaded machine the estimate errs long. Sweeps with a learning-rate search are
refused: their later rungs depend on results.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from attnlab.runner.config import RunConfig
from attnlab.runner.search import has_search
from attnlab.sweeps import load_sweep
from attnlab.train.loop import evaluate, evaluate_extrapolation, train


def config_key(run: RunConfig) -> str:
    """The run's config without its seed and sweep: runs that do the same work."""
    data = json.loads(run.canonical_json())
    data.pop("seed")
    data.pop("sweep", None)
    return json.dumps(data, sort_keys=True)


def flat(data: dict, prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out |= flat(value, f"{prefix}{key}.")
        else:
            out[prefix + key] = json.dumps(value)
    return out


def labels(keys: list[str]) -> dict[str, str]:
    """Each configuration named by its task and the fields in which it differs from the other configurations of the
    same task (``addition format="plain"``, ``mqar train.meap_mask_fraction=0.15``)."""
    fields = {key: flat(json.loads(key)) for key in keys}
    out = {}
    for key, mine in fields.items():
        same_task = [f for f in fields.values() if f["task.name"] == mine["task.name"]]
        differ = sorted(n for n in {n for f in same_task for n in f} if len({f.get(n) for f in same_task}) > 1)
        parts = [f"{n.removeprefix('task.')}={mine.get(n, '-')}" for n in differ]
        out[key] = " ".join([json.loads(mine["task.name"]), *parts])
    return out


def pilot(run: RunConfig, steps: int) -> dict[str, float]:
    """CPU seconds per training step, per evaluation and for the extrapolation sets, and the run's estimate."""
    cfg = run.train.model_copy(update={"steps": steps, "eval_every": steps, "eval_examples": 8, "extrapolate": []})
    t0 = time.process_time()
    model = train(run.model, run.task, cfg, run.seed).model
    step = (time.process_time() - t0) / steps
    assert model is not None
    eval_set = run.task.build(run.seed).eval_batch(run.train.eval_examples)
    t0 = time.process_time()
    evaluate(model, eval_set, run.train, sequence_metric=run.task.sequence_metric)
    once = time.process_time() - t0
    t0 = time.process_time()
    evaluate_extrapolation(model, run.task, run.train, run.seed)
    longer = time.process_time() - t0
    evaluations = run.train.steps // run.train.eval_every + (run.train.steps % run.train.eval_every > 0)
    estimate = run.train.steps * step + evaluations * once + longer
    return {"step": step, "eval": once, "extrapolate": longer, "run": estimate}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep", help="a preset name or a sweep file")
    parser.add_argument("--steps", type=int, default=150, help="training steps of each pilot")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)
    sweep = load_sweep(args.sweep)
    if has_search(sweep):
        sys.exit(f"error: sweep={args.sweep!r}: has a learning-rate search (its later rungs depend on results)")
    runs = sweep.runs()
    by_key: dict[str, list[RunConfig]] = {}
    for run in runs:
        by_key.setdefault(config_key(run), []).append(run)
    names = labels(list(by_key))
    pilot(runs[0], 10)  # warm-up, not counted: the first training in a process pays for allocations and lazy setup
    total = 0.0
    print(f"{len(runs)} runs, {len(by_key)} configurations; pilots of {args.steps} steps (CPU time, 1 thread)")
    for key, group in by_key.items():
        cost = pilot(group[0], args.steps)
        total += cost["run"] * len(group)
        print(
            f"  {names[key]}: {cost['step'] * 1000:.1f} ms/step, {cost['eval']:.2f} s/evaluation, "
            f"{cost['extrapolate']:.2f} s extrapolation; {group[0].train.steps} steps → {cost['run']:.0f} s/run "
            f"× {len(group)} runs",
            flush=True,
        )
    print(f"total {total:.0f} CPU s; on {args.workers} workers about {total / args.workers / 60:.1f} min")


if __name__ == "__main__":
    main()
