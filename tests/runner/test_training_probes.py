"""Probes and kept weights through training: ``train.probes`` adds the lens's probes to a run's curves at every
evaluation, ``train.checkpoint_every`` keeps the weights at N, 2N, 4N, …, and ``attnlab inspect RUN --step S``
(``load_run(..., step=S)``) reproduces the evaluation stored at that step; both fields off leave run ids alone."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from attnlab.cli import app
from attnlab.errors import ConfigError
from attnlab.runner.checkpoint_model import load_run
from attnlab.runner.config import RunConfig, Sweep
from attnlab.runner.local import run_local
from attnlab.runner.store import Store
from attnlab.train.config import TrainConfig
from attnlab.train.loop import evaluate, keeps_snapshot

TRAIN = dict(steps=40, batch_size=8, eval_every=10, eval_examples=32, lr=3e-3)


def sweep(**train) -> Sweep:
    return Sweep(
        name="probed",
        tasks=[{"name": "induction", "vocab": 16, "half": 6}],
        mechanisms=[{"normaliser": "softmax"}],
        positions=["rope"],
        widths=[16],
        model={"n_layers": 2, "n_heads": 2, "mlp": False},
        train=TrainConfig(**{**TRAIN, **train}),
    )


@pytest.fixture(scope="module")
def probed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    db = tmp_path_factory.mktemp("probed") / "runs.sqlite"
    runs = sweep(probes=True, checkpoint_every=10).runs()
    with Store(db) as store:
        run_local(runs, store, workers=0)
    return db, runs[0].run_id


def test_keeps_snapshot_at_every_power_of_two_multiple() -> None:
    assert [s for s in range(1, 100) if keeps_snapshot(s, 10)] == [10, 20, 40, 80]
    assert not any(keeps_snapshot(s, None) for s in range(1, 50))


def test_the_probes_are_curves_at_every_evaluation(probed: tuple[Path, str]) -> None:
    db, run_id = probed
    with Store(db) as store:
        curves = store.curves(run_id)
    steps = {s for s, n, _ in curves if n == "eval_loss"}
    for name in ("probe/max_logit/L0", "probe/entropy/L1", "probe/sink_rate/L0", "probe/induction/L1",
                 "probe/resid_kurtosis/L1", "probe/attn_out_max_abs/L0", "probe/log_z"):  # fmt: skip
        assert {s for s, n, _ in curves if n == name} == steps == {10, 20, 30, 40}, name


def test_a_kept_step_reproduces_its_stored_evaluation(probed: tuple[Path, str]) -> None:
    db, run_id = probed
    with Store(db) as store:
        assert list(store.snapshot_steps(run_id)) == [10, 20, 40]
        stored = {n: v for s, n, v in store.curves(run_id) if s == 20 and n.startswith("eval_")}
    model, cfg = load_run(db, run_id, step=20)
    again = evaluate(model, cfg.task.build(cfg.seed).eval_batch(cfg.train.eval_examples), cfg.train)
    assert again["loss"] == pytest.approx(stored["eval_loss"], rel=1e-6)  # same weights, same data, same path
    assert again["accuracy"] == stored["eval_accuracy"]
    final, _ = load_run(db, run_id)
    assert any((a - b).abs().max() > 0 for a, b in zip(final.parameters(), model.parameters(), strict=True))
    with pytest.raises(ConfigError) as err:
        load_run(db, run_id, step=30)
    assert "allowed: 10, 20, 40" in str(err.value)


def test_inspect_step_prints_the_stored_and_the_recomputed_evaluation(probed: tuple[Path, str]) -> None:
    db, run_id = probed
    result = CliRunner().invoke(app, ["inspect", run_id, "--db", str(db), "--step", "20", "--top", "2"])
    assert result.exit_code == 0, result.output
    lines = [ln for ln in result.output.splitlines() if ln.startswith("step 20 ")]
    assert len(lines) == 2
    for line in lines:
        stored, now = (float(part.split()[-1]) for part in line.split(":", 1)[1].split(","))
        assert stored == pytest.approx(now, rel=1e-5)
    bad = CliRunner().invoke(app, ["inspect", "smollm2", "--step", "20"])
    assert bad.exit_code == 2 and "step" in bad.output


def test_a_continued_run_finds_the_weights_its_earlier_stop_kept(tmp_path: Path) -> None:
    full = sweep(checkpoint_every=10).runs()[0]
    first = RunConfig.model_validate({**full.model_dump(), "train": {**full.train.model_dump(), "stop_at": 20}})
    db = tmp_path / "runs.sqlite"
    with Store(db) as store:
        run_local([first], store, workers=0)
        run_local([full], store, workers=0)  # continues from the stop at 20: trains 21..40 only
        assert list(store.snapshot_steps(full.run_id)) == [10, 20, 40]


def test_both_fields_off_leave_the_config_json_unchanged() -> None:
    plain = TrainConfig(**TRAIN).model_dump()
    assert TrainConfig(**TRAIN, probes=False, checkpoint_every=None).model_dump() == plain
    assert "probes" not in plain and "checkpoint_every" not in plain
    with pytest.raises(ConfigError):
        TrainConfig(**TRAIN, checkpoint_every=15)
