"""The learning-rate search on Ray: the same runs, metrics and curves as in-process, and promoted runs continue from
the state the driver sends along (a Ray worker reads no file of the database's folder). Skipped without Ray."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch

from attnlab.runner.config import RunConfig, SearchConfig, Sweep
from attnlab.runner.execute import RunOutcome, set_threads
from attnlab.runner.local import run_local
from attnlab.runner.ray_backend import run_ray
from attnlab.runner.search import run_search
from attnlab.runner.store import Store
from attnlab.train.config import TrainConfig


def rows(store: Store) -> dict[str, tuple]:
    """Each run's status, final metrics (but the timing) and curves."""
    return {
        r["run_id"]: (r["status"], {k: v for k, v in r["final"].items() if k != "train_s"}, store.curves(r["run_id"]))
        for r in store.runs()
    }


@pytest.mark.slow
def test_a_search_on_ray_records_what_it_records_in_process(tiny_task: dict, tmp_path: Path) -> None:
    ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'attnlab[ray]')")
    sweep = Sweep(
        name="ray-search",
        tasks=[tiny_task],
        mechanisms=[{"normaliser": "softmax"}],
        widths=[16],
        seeds=[0, 1],
        model={"n_layers": 1, "n_heads": 2},
        train=TrainConfig(steps=40, batch_size=16, eval_every=10, eval_examples=64),
        search=SearchConfig(lrs=[1e-3, 3e-3, 1e-2, 3e-2], min_steps=10, eta=2),
    )
    continued: list[tuple[RunConfig, RunOutcome]] = []
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # Ray's notice about accelerator variables
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        with Store(tmp_path / "ray.sqlite") as on_ray:

            def on_done(run: RunConfig, outcome: RunOutcome) -> None:
                continued.append((run, outcome))

            def batch(runs: Any) -> None:
                run_ray(runs, on_ray, workers=2, threads=1, on_done=on_done)

            run_search(sweep, on_ray, batch)
            by_ray = rows(on_ray)
    finally:
        ray.shutdown()
    before = os.environ.get("OMP_NUM_THREADS")
    threads = torch.get_num_threads()
    try:
        set_threads(1)  # as each Ray task ran
        with Store(tmp_path / "local.sqlite") as local:
            run_search(sweep, local, lambda runs: run_local(runs, local, workers=0, threads=1))
            in_process = rows(local)
    finally:
        torch.set_num_threads(threads)
        if before is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = before
    assert by_ray == in_process
    assert len(by_ray) == 14  # 8 + 4 + 2 runs
    assert {o.resumed_from for r, o in continued if r.train.stop_at != 10} == {10, 20}
