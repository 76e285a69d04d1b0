"""W8A8 fake quantisation and activation outliers: known answers for the quantisers and the kurtosis, the context
that quantises every linear layer and restores it, and ``attnlab quantise RUN_ID`` on a finished run.

The quantisers are exact functions (round to a grid); their bounds follow from the grid: a value inside the range
moves by at most half a step (scale / 2), one on the grid not at all.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from attnlab.cli import app
from attnlab.errors import ConfigError
from attnlab.experiments.quantisation import quantisation_probe
from attnlab.lens.outliers import activation_outliers, kurtosis, outlier_summary
from attnlab.lens.quantise import calibrate, fake_quantised, linear_layers, quantise_asymmetric, quantise_symmetric
from attnlab.model.config import ModelConfig
from attnlab.model.transformer import TransformerLM
from attnlab.runner.checkpoint_model import load_run
from attnlab.runner.config import Sweep
from attnlab.runner.local import run_local
from attnlab.runner.store import Store
from attnlab.train.config import TrainConfig


def test_symmetric_quantisation_keeps_the_grid_and_moves_others_by_at_most_half_a_step() -> None:
    x = torch.tensor([-1.27, 0.0, 0.01, 0.5, 1.27], dtype=torch.float64)  # max 1.27 → scale 0.01
    on_grid = quantise_symmetric(x)
    torch.testing.assert_close(on_grid, x, rtol=0, atol=1e-12)
    y = torch.linspace(-2, 2, 1001, dtype=torch.float64)
    assert (quantise_symmetric(y) - y).abs().max() <= 2 / 127 / 2 + 1e-12
    assert quantise_symmetric(y).unique().numel() <= 255
    assert quantise_symmetric(torch.zeros(3)).eq(0).all()


def test_per_channel_quantisation_gives_each_row_its_own_scale() -> None:
    w = torch.tensor([[100.0, 1.0], [0.02, 0.01]], dtype=torch.float64)
    per_row = quantise_symmetric(w, per_channel=True)
    per_tensor = quantise_symmetric(w)
    torch.testing.assert_close(per_row[1], w[1], rtol=0, atol=0.02 / 127 / 2 + 1e-15)
    assert per_tensor[1].eq(0).all()  # one scale of 100/127 rounds the small row away: the outlier's cost


def test_asymmetric_quantisation_has_an_exact_zero_and_clips_outside_its_range() -> None:
    x = torch.tensor([-1.0, 0.0, 0.3, 3.0, 10.0], dtype=torch.float64)
    q = quantise_asymmetric(x, -1.0, 3.0)
    step = 4.0 / 255
    assert q[1] == 0 and q[4] == pytest.approx(3.0, abs=step)  # 10 clips to the top of the range
    assert (q[:4] - x[:4]).abs().max() <= step / 2 + 1e-12 + step  # the zero point's rounding moves the grid ≤ 1 step
    assert quantise_asymmetric(x, 0.5, 2.0).min() == 0  # the range is widened to include zero


def test_kurtosis_known_answers() -> None:
    assert float(kurtosis(torch.tensor([-1.0, 1.0]))) == pytest.approx(1.0)  # two points: E x⁴ / (E x²)² = 1
    # [0, 0, 0, 0, 5]: μ = 1, deviations (−1 ×4, 4): m2 = 20/5 = 4, m4 = (4 + 256)/5 = 52 → 52/16 = 3.25
    assert float(kurtosis(torch.tensor([0.0, 0, 0, 0, 5]))) == pytest.approx(3.25)
    stats = activation_outliers({"blocks.0.hook_resid_post": torch.tensor([[1.0, -7.0]])})
    assert stats["blocks.0.hook_resid_post"]["max_abs"] == 7.0
    assert outlier_summary(stats) == {"resid_post_max_abs": 7.0, "resid_post_kurtosis": 1.0}


def tiny_lm() -> TransformerLM:
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=16, d_model=16, n_heads=2, n_layers=2, max_seq_len=8)
    return TransformerLM(cfg).double().eval()


@torch.no_grad()
def test_fake_quantised_computes_each_linear_in_8_bits_and_restores_the_model() -> None:
    model = tiny_lm()
    tokens = torch.randint(0, 16, (3, 8), generator=torch.Generator().manual_seed(1))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    expected = model(tokens)
    ranges = calibrate(model, [tokens])
    assert set(ranges) == set(linear_layers(model))
    name, layer = next(iter(linear_layers(model).items()))
    x = torch.randn(2, 16, dtype=torch.float64)
    with fake_quantised(model, ranges, "per_channel"):
        low, high = ranges[name]
        by_hand = F.linear(quantise_asymmetric(x, low, high), quantise_symmetric(layer.weight, per_channel=True))
        torch.testing.assert_close(layer(x), by_hand, rtol=0, atol=0)
        quantised = model(tokens)
    assert 0 < (quantised - expected).abs().max() < 0.5 * expected.abs().max()
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, before[key], rtol=0, atol=0)
    torch.testing.assert_close(model(tokens), expected, rtol=0, atol=0)
    with pytest.raises(ConfigError), fake_quantised(model, ranges, "per_row"):  # type: ignore[arg-type]
        pass


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    db = tmp_path_factory.mktemp("quantise") / "runs.sqlite"
    sweep = Sweep(
        name="q",
        tasks=[{"name": "mqar", "vocab": 16, "length": 16, "num_kv_pairs": 2}],
        mechanisms=[{"normaliser": "softmax"}],
        positions=["rope"],
        widths=[16],
        model={"n_layers": 2, "n_heads": 2},
        train=TrainConfig(steps=40, batch_size=8, eval_every=40, eval_examples=64),
    )
    with Store(db) as store:
        run_local(sweep.runs(), store, workers=0)
    return db, sweep.runs()[0].run_id


def test_the_probe_reproduces_the_runs_loss_in_full_precision_and_reports_each_setting(finished) -> None:
    db, run_id = finished
    model, cfg = load_run(db, run_id)
    with Store(db) as store:
        final = store.runs()[0]["final"]
    result = quantisation_probe(model, cfg.task, cfg.train, cfg.seed)
    assert result.metrics["fp32"]["loss"] == pytest.approx(final["loss"], rel=1e-6)
    assert set(result.metrics) == {"fp32", "w8a8_per_tensor", "w8a8_per_channel"}
    assert all(result.metrics[s]["loss"] != result.metrics["fp32"]["loss"] for s in result.metrics if s != "fp32")
    assert {"resid_post_kurtosis", "attn_out_max_abs", "w8a8_per_tensor_gap"} <= set(result.summary())


def test_quantise_command_prints_the_table_and_an_unknown_run_is_one_line(finished) -> None:
    db, run_id = finished
    result = CliRunner().invoke(app, ["quantise", run_id, "--db", str(db)])
    assert result.exit_code == 0, result.output
    assert "w8a8_per_tensor" in result.output and "w8a8_per_channel" in result.output and "kurtosis" in result.output
    bad = CliRunner().invoke(app, ["quantise", "0123456789abcdef", "--db", str(db)])
    assert bad.exit_code == 2 and len([ln for ln in bad.output.splitlines() if ln.strip()]) == 1, bad.output
