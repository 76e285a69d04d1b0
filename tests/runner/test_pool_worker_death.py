"""``run_local`` when every pool worker dies at start-up: each run is recorded as failed and the sweep ends.

Regression: when several futures broke in the same ``wait``, the first one's handling requeued the others and the
next one raised ``KeyError``. The script below kills each spawned worker as it imports the parent's main module
(the worker sees it as ``__mp_main__``), so both in-flight futures break together.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

SCRIPT = """
import json, os, sys

if __name__ == "__mp_main__":  # a spawned pool worker importing this file: die as a crashed worker would
    os._exit(3)

from attnlab.runner.config import Sweep
from attnlab.runner.local import run_local
from attnlab.runner.store import Store
from attnlab.train.config import TrainConfig

if __name__ == "__main__":
    sweep = Sweep(
        name="dying",
        tasks=[{"name": "mqar", "vocab": 16, "length": 16, "num_kv_pairs": 2}],
        mechanisms=[{"normaliser": "softmax"}],
        widths=[16],
        lrs=[1e-3, 2e-3],
        model={"n_layers": 1, "n_heads": 2},
        train=TrainConfig(steps=5, batch_size=4, eval_every=5, eval_examples=8),
    )
    with Store(sys.argv[1]) as store:
        summary = run_local(sweep.runs(), store, workers=2, threads=1)
        statuses = sorted((r["status"], (r["error"] or "").splitlines()[0]) for r in store.runs())
    print(json.dumps({"done": summary.done, "failed": summary.failed, "statuses": statuses}))
"""


def test_runs_whose_workers_die_are_recorded_as_failed_and_the_sweep_ends(tmp_path: Path) -> None:
    script = tmp_path / "dying_workers.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    out = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "results.sqlite")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert (result["done"], result["failed"]) == (0, 2)
    assert [status for status, _ in result["statuses"]] == ["failed", "failed"]
    assert all(error.startswith("worker process died") for _, error in result["statuses"])
