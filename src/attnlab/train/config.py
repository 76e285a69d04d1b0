"""``TrainConfig``: the one training loop's knobs."""

from __future__ import annotations

from pydantic import Field

from attnlab.config import StrictModel


class TrainConfig(StrictModel):
    steps: int = Field(2000, gt=0)
    batch_size: int = Field(64, gt=0)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.1, ge=0)
    betas: tuple[float, float] = (0.9, 0.98)
    warmup_frac: float = Field(0.05, ge=0, lt=1)
    min_lr_frac: float = Field(0.1, ge=0, le=1)  # cosine decays to lr · min_lr_frac
    grad_clip: float | None = Field(1.0, gt=0)
    eval_every: int = Field(100, gt=0)
    eval_examples: int = Field(512, gt=0)
    target_accuracy: float | None = Field(None, gt=0, le=1)  # early stop once reached at an evaluation
    bf16: bool = False  # bf16 autocast (CPU or CUDA)
    device: str = "cpu"
