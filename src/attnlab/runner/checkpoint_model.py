"""A finished run of a results database as a model: its stored config rebuilt, its checkpoint loaded.

This is the runner's side of ``attnlab inspect RUN_ID``: the store knows where a run's weights are and which config
built them; the lens then studies the model like any other (it does not read the store itself).
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from attnlab.errors import ConfigError
from attnlab.model.encdec import build_model
from attnlab.runner.config import RunConfig, run_from_json
from attnlab.runner.store import Store


def load_run(db: str | Path, run_id: str, step: int | None = None) -> tuple[nn.Module, RunConfig]:
    """A finished run of a results database → (its trained model in eval mode, its ``RunConfig``).

    The weights are the run's safetensors checkpoint (written by the sweep runner when the run finished), or with
    ``step`` those it kept at that step of its training (``train.checkpoint_every``); the architecture is rebuilt
    from the config stored with the run. Raises ``ConfigError`` when the run is unknown, not finished, or has no
    checkpoint (databases written before checkpoints were stored) or none at ``step`` (the error lists those kept).
    """
    from safetensors.torch import load_file

    with Store(db) as store:
        row = next((r for r in store.runs() if r["run_id"] == run_id), None)
        if row is None:
            raise ConfigError("run_id", run_id, f"not in {db}")
        if row["status"] != "done":
            raise ConfigError("run_id", run_id, f"is {row['status']}, not done: it has no trained weights")
        path = store.checkpoint_path(run_id)
        if step is not None:
            kept = store.snapshot_steps(run_id)
            if step not in kept:
                allowed = list(kept) or "none: the run was trained without train.checkpoint_every"
                raise ConfigError("step", step, f"has no kept weights for run {run_id}", allowed)
            path = kept[step]
    if not path.is_file():
        raise ConfigError("run_id", run_id, f"has no checkpoint ({path} is missing; re-run it to store one)")
    cfg = run_from_json(row["config"])  # imports the plugins that define its entries
    model = build_model(cfg.model)
    model.load_state_dict(load_file(path))
    return model.eval(), cfg
