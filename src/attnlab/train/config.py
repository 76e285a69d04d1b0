"""``TrainConfig``: the one training loop's knobs."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, SerializerFunctionWrapHandler, field_validator, model_serializer

from attnlab.config import StrictModel
from attnlab.errors import ConfigError


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
    # torch.compile the model for the training steps (evaluation runs eager). `attnlab speed` measures it on the
    # bench model; on the 2-core CPU its gain did not hold up across runs and a cold compile took ~40 s (README).
    compile: bool = False
    device: str = "cpu"
    # Length extrapolation: after training, evaluate the task at round(f · T) for each factor f (the task needs
    # with_length); final metrics loss@{f}x, accuracy@{f}x (NaN where the model cannot represent the length).
    extrapolate: list[Annotated[float, Field(gt=0)]] = []

    @field_validator("extrapolate")
    @classmethod
    def _distinct(cls, factors: list[float]) -> list[float]:
        """Each factor once: its metrics are named by it (``loss@2x``)."""
        for i, factor in enumerate(factors):
            if factor in factors[:i]:
                raise ConfigError("extrapolate", factors, f"factor {factor:g} is given twice", "distinct factors")
        return factors

    @model_serializer(mode="wrap")
    def _omit_later_defaults(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """Dump without ``extrapolate`` when empty and without ``compile`` when off, so configs (and run ids)
        from before those fields existed keep their canonical JSON and a resumed sweep finds its finished runs."""
        data = handler(self)
        if not self.extrapolate:
            data.pop("extrapolate", None)
        if not self.compile:
            data.pop("compile", None)
        return data
