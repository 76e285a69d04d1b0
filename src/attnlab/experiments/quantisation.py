"""The quantisation probe of a trained run: its evaluation loss in full precision and under W8A8 fake quantisation
(weights per tensor and per output channel), with the activation outliers that explain the gap.

Bondarenko et al. 2023 ("Quantizable Transformers", arXiv:2306.12929) report that clipped softmax and gated
attention remove the outliers of heads that learn to do nothing and so shrink the W8A8 gap; this is the measurement
that claim is tested with (``attnlab quantise RUN_ID``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from attnlab.hook_points import capture
from attnlab.lens.outliers import activation_outliers, outlier_names, outlier_summary
from attnlab.lens.quantise import GRANULARITIES, calibrate, fake_quantised
from attnlab.tasks import TaskConfig
from attnlab.tasks.base import Batch
from attnlab.train.config import TrainConfig
from attnlab.train.device import resolve_device
from attnlab.train.loop import evaluate, run_model, to_device

CALIBRATION_STEPS = 4  # training batches of the task used to calibrate the activation ranges (not the eval set)


@dataclass(frozen=True)
class QuantisationResult:
    """Loss and accuracy per setting (``fp32``, ``w8a8_per_tensor``, ``w8a8_per_channel``) and the outliers."""

    metrics: dict[str, dict[str, float]]
    outliers: dict[str, dict[str, float]]  # hook name → max_abs, kurtosis (on the first evaluation batch)

    def gap(self, setting: str) -> float:
        """The setting's loss minus the full-precision loss."""
        return self.metrics[setting]["loss"] - self.metrics["fp32"]["loss"]

    def summary(self) -> dict[str, float]:
        """One flat record: each setting's loss and gap, and the largest outliers (for tables and curves)."""
        out = {"fp32_loss": self.metrics["fp32"]["loss"]}
        for setting in self.metrics:
            if setting != "fp32":
                out[f"{setting}_loss"] = self.metrics[setting]["loss"]
                out[f"{setting}_gap"] = self.gap(setting)
        return out | outlier_summary(self.outliers)


def quantisation_probe(
    model: nn.Module, task_cfg: TaskConfig, train_cfg: TrainConfig, seed: int, eval_examples: int | None = None
) -> QuantisationResult:
    """Evaluate ``model`` (a run trained on ``task_cfg``) in full precision and W8A8 on the task's evaluation set,
    with activation ranges calibrated on ``CALIBRATION_STEPS`` of its training batches (far past the run's steps,
    so they are batches it never trained on)."""
    device = resolve_device(train_cfg.device)
    model = model.to(device).eval()
    task = task_cfg.build(seed)
    eval_set = task.eval_batch(eval_examples or train_cfg.eval_examples)
    fp32 = TrainConfig.model_validate({**train_cfg.model_dump(), "precision": "fp32"})
    unseen = train_cfg.steps + 1_000_000
    calibration: list[Batch] = [
        to_device(task.train_batch(unseen + i, train_cfg.batch_size), device) for i in range(CALIBRATION_STEPS)
    ]
    metrics = {"fp32": evaluate(model, eval_set, fp32)}
    ranges = calibrate(model, calibration)
    for granularity in GRANULARITIES:
        with fake_quantised(model, ranges, granularity):
            metrics[f"w8a8_{granularity}"] = evaluate(model, eval_set, fp32)
    model.eval()  # evaluate leaves the model in training mode
    first = to_device(eval_set, device, slice(0, train_cfg.batch_size))
    with torch.no_grad(), capture(model, outlier_names(model)) as cache:
        run_model(model, first)
    return QuantisationResult(metrics, activation_outliers(dict(cache)))
