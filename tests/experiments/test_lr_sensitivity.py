"""Learning-rate sensitivity: the measure by hand, and ``attnlab sensitivity`` on a tiny probed suite (plain,
qk-norm, z-loss) whose table and plots it must produce."""

from __future__ import annotations

import math

import pytest
from typer.testing import CliRunner

from attnlab.cli import app
from attnlab.experiments.lr_sensitivity import lr_sensitivity, sensitivity_curves
from attnlab.runner.config import Sweep
from attnlab.runner.local import run_local
from attnlab.runner.store import Store
from attnlab.runner.suite import Suite
from attnlab.sweeps import load_sweep
from attnlab.train.config import TrainConfig


def test_the_measure_by_hand() -> None:
    # capped losses [2, 3, 5 (diverged → ℓ₀), 5 (above ℓ₀ → ℓ₀)]: mean 15/4 minus the best 2
    assert lr_sensitivity([2.0, 3.0, math.nan, 7.0], initial_loss=5.0) == pytest.approx(15 / 4 - 2)
    assert lr_sensitivity([1.0, 1.0], initial_loss=5.0) == 0.0  # flat: no sensitivity
    assert lr_sensitivity([math.inf], initial_loss=5.0) == 0.0


def test_the_preset_is_the_papers_grid() -> None:
    suite = load_sweep("lr-sensitivity")
    runs = suite.runs()
    assert len(runs) == 3 * 7 * 4
    assert sorted({r.train.lr for r in runs}) == [1e-4, 3.16e-4, 1e-3, 3.16e-3, 1e-2, 3.16e-2, 1e-1]
    assert {(r.model.attention.qk_norm, r.train.z_loss) for r in runs} == {
        (None, 0.0),
        ("layernorm", 0.0),
        (None, 1e-4),
        ("layernorm", 1e-4),
    }
    assert all(r.train.probes for r in runs)


def test_the_command_prints_each_width_and_variant_and_writes_the_plots(tmp_path) -> None:
    task = {"name": "mqar", "vocab": 16, "length": 16, "num_kv_pairs": 2}
    train = TrainConfig(steps=20, batch_size=8, eval_every=10, eval_examples=16, probes=True)

    def part(name: str, t: TrainConfig) -> Sweep:
        mechanisms = [{"normaliser": "softmax"}, {"normaliser": "softmax", "qk_norm": "rmsnorm"}]
        return Sweep(name=name, tasks=[task], mechanisms=mechanisms, widths=[16], lrs=[1e-3, 1e-2],
                     model={"n_layers": 1, "n_heads": 2}, train=t)  # fmt: skip

    suite = Suite(name="sens", parts=[part("a", train), part("b", train.model_copy(update={"z_loss": 1e-3}))])
    db = tmp_path / "runs.sqlite"
    with Store(db) as store:
        run_local(suite.runs(), store, workers=0)
        rows = store.runs(sweep="sens")
        curves: dict = {}
        for run_id, step, name, value in store.metrics(sweep="sens"):
            curves.setdefault(run_id, []).append((step, name, value))
    found = sensitivity_curves(rows, curves)
    assert {c.variant for c in found} == {"plain", "qk-norm", "plain + z-loss 0.001", "qk-norm + z-loss 0.001"}
    assert all(len(c.points) == 2 and c.initial_loss == pytest.approx(math.log(16)) for c in found)
    assert all(math.isfinite(p.max_logit) and math.isfinite(p.log_z) for c in found for p in c.points)
    result = CliRunner().invoke(app, ["sensitivity", str(db), "--sweep", "sens", "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "qk-norm + z-loss 0.001" in result.output and "LR sensitivity" in result.output
    assert (tmp_path / "out" / "loss_vs_lr.png").stat().st_size > 1000
    assert (tmp_path / "out" / "max_logit_vs_lr.png").stat().st_size > 1000
    bad = CliRunner().invoke(app, ["sensitivity", str(db), "--sweep", "nope"])
    assert bad.exit_code == 2 and "sens" in bad.output
