"""TrainConfig.device and TrainConfig.precision: the one-line error for an absent device, auto on this machine,
bf16 / fp16 autocast training, and run ids that stay what they were before the fields existed."""

from __future__ import annotations

import hashlib
import math

import pytest
import torch

from attnlab.errors import ConfigError
from attnlab.model.config import ModelConfig
from attnlab.runner.config import RunConfig
from attnlab.tasks.mqar import MQARConfig
from attnlab.train import TrainConfig, train
from attnlab.train.device import devices_present, resolve_device

TASK = MQARConfig(vocab=16, length=16, num_kv_pairs=2)
MODEL = ModelConfig(vocab_size=16, d_model=16, n_layers=1, n_heads=2, max_seq_len=16)
SHORT = {"steps": 4, "batch_size": 8, "lr": 3e-3, "eval_every": 2, "eval_examples": 16}

# The canonical JSON of a default TrainConfig before `precision` existed (as stored in every run's config_json).
DEFAULT_TRAIN_JSON = (
    '{"batch_size":64,"betas":[0.9,0.98],"bf16":false,"device":"cpu","eval_every":100,"eval_examples":512,'
    '"grad_clip":1.0,"lr":0.001,"min_lr_frac":0.1,"steps":2000,"target_accuracy":null,"warmup_frac":0.05,'
    '"weight_decay":0.1}'
)
# The ids of the quick preset's runs before `precision` existed (``[r.run_id for r in old_quick_sweep().runs()]``
# at the parent commit of this change): the first, and the sha1 of all twelve joined.
QUICK_FIRST_RUN_ID = "d49f62f25263312b"
QUICK_RUN_IDS_SHA1 = "2f1d9255ce5458613edfb4b258f30773805f6cbd"


@pytest.mark.parametrize("device", ["cuda", "cuda:1", "mps"])
def test_a_device_that_is_not_here_is_one_line_naming_the_field_the_value_and_the_devices_present(device: str) -> None:
    if device in devices_present():
        pytest.skip(f"{device} is present on this machine")
    with pytest.raises(ConfigError) as err:
        TrainConfig(device=device)
    message = str(err.value)
    assert "\n" not in message
    assert f"TrainConfig.device={device!r}: not available here" in message
    assert f"(allowed: {', '.join(devices_present())})" in message


def test_a_device_that_is_no_device_is_one_line_too() -> None:
    with pytest.raises(ConfigError, match=r"^TrainConfig.device='gpu': not a device .*\(allowed: auto, cpu"):
        TrainConfig(device="gpu")


def test_through_a_run_config_the_error_names_the_train_field() -> None:
    absent = next(d for d in ("cuda", "mps", "cuda:7") if d not in devices_present())
    with pytest.raises(ConfigError, match=rf"train.device='{absent}': not available here"):
        RunConfig.parse({"model": MODEL.model_dump(), "task": TASK.model_dump(), "train": {"device": absent}})


def test_auto_resolves_to_cuda_then_mps_then_cpu() -> None:
    expected = "cuda" if torch.cuda.is_available() else ("mps" if "mps" in devices_present() else "cpu")
    assert resolve_device("auto").type == expected


def test_a_default_train_config_serialises_as_before_so_run_ids_stay() -> None:
    assert TrainConfig().canonical_json() == DEFAULT_TRAIN_JSON
    assert TrainConfig(precision="bf16").canonical_json() == DEFAULT_TRAIN_JSON.replace('"bf16":false', '"bf16":true')
    fp16 = TrainConfig(precision="fp16").canonical_json()
    assert '"precision":"fp16"' in fp16 and '"bf16":false' in fp16


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_a_train_config_round_trips_through_its_json(precision: str) -> None:
    cfg = TrainConfig(precision=precision)
    assert TrainConfig.parse(cfg.model_dump(mode="json")) == cfg


def test_the_older_bf16_flag_reads_as_precision_and_a_contradiction_is_refused() -> None:
    assert TrainConfig(bf16=True).precision == "bf16"
    assert TrainConfig(bf16=False).precision == "fp32"
    with pytest.raises(ConfigError, match=r"bf16=True: contradicts precision='fp16'"):
        TrainConfig(bf16=True, precision="fp16")


def old_quick_sweep():
    """The quick preset as it was when these ids were recorded (it has since gained seeds and a search)."""
    from attnlab.runner.config import Sweep

    return Sweep(
        name="quick",
        tasks=[{"name": "mqar", "vocab": 64, "length": 32, "num_kv_pairs": 4}],
        mechanisms=[
            {"normaliser": "softmax"},
            {"normaliser": "sigmoid"},
            {"normaliser": "cog"},
            {"normaliser": "lssa"},
            {"normaliser": "clipped_softmax"},
            {"normaliser": "softmax", "heads": "gated"},
        ],
        positions=["rope"],
        widths=[64],
        lrs=[1e-3, 3e-3],
        seeds=[0],
        model={"n_layers": 2, "n_heads": 4, "mlp": False},
        train=TrainConfig(steps=1500, batch_size=64, eval_every=100, eval_examples=512, target_accuracy=0.99),
    )


def test_the_quick_presets_run_ids_are_unchanged() -> None:
    ids = [run.run_id for run in old_quick_sweep().runs()]
    assert ids[0] == QUICK_FIRST_RUN_ID
    assert hashlib.sha1("".join(ids).encode()).hexdigest() == QUICK_RUN_IDS_SHA1


def test_device_auto_trains_here() -> None:
    result = train(MODEL, TASK, TrainConfig(device="auto", **SHORT), seed=0)
    assert next(result.model.parameters()).device.type == resolve_device("auto").type
    assert math.isfinite(result.final["loss"])


def test_bf16_autocast_trains_a_few_steps_with_a_finite_loss() -> None:
    result = train(MODEL, TASK, TrainConfig(precision="bf16", **SHORT), seed=0)
    losses = [value for _, name, value in result.curves if name == "train_loss"]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)


def fp16_autocast_runs_on_cpu() -> str | None:
    """Why fp16 autocast with a gradient scaler cannot run on this CPU, or None when it can."""
    try:
        layer = torch.nn.Linear(4, 4)
        scaler = torch.amp.GradScaler("cpu")
        with torch.autocast("cpu", dtype=torch.float16):
            out = layer(torch.ones(2, 4))
        scaler.scale(out.float().sum()).backward()
    except (RuntimeError, TypeError) as err:
        return f"fp16 autocast on this CPU: {err}"
    return None


def test_fp16_with_the_gradient_scaler_trains_a_few_steps_with_a_finite_loss() -> None:
    reason = fp16_autocast_runs_on_cpu()
    if reason is not None:
        pytest.skip(reason)
    result = train(MODEL, TASK, TrainConfig(precision="fp16", **SHORT), seed=0)
    losses = [value for _, name, value in result.curves if name == "train_loss"]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
    assert math.isfinite(result.final["loss"])
