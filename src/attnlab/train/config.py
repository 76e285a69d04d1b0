"""``TrainConfig``: the one training loop's knobs."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, SerializerFunctionWrapHandler, field_validator, model_serializer, model_validator

from attnlab.config import StrictModel
from attnlab.errors import ConfigError
from attnlab.train.device import Precision, check_device


class TrainConfig(StrictModel):
    steps: int = Field(2000, gt=0)
    batch_size: int = Field(64, gt=0)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.1, ge=0)
    betas: tuple[float, float] = (0.9, 0.98)
    warmup_frac: float = Field(0.05, ge=0, lt=1)
    min_lr_frac: float = Field(0.1, ge=0, le=1)  # cosine decays to lr · min_lr_frac
    grad_clip: float | None = Field(1.0, gt=0)
    # z-loss: + z_loss · mean(log² Z) over scored positions, Z the softmax normaliser of the output logits (PaLM,
    # arXiv:2204.02311, §5 with 1e-4; Wortsman et al. 2023, arXiv:2309.14322: it removes output-logit divergence)
    z_loss: float = Field(0.0, ge=0)
    # MEAP (Zhuang et al. 2025, arXiv:2502.07490): this fraction of each training batch's input tokens is replaced
    # by a mask token (the reserved id = the task's vocab_size; the model needs one more id), targets unchanged;
    # evaluation is never masked (attnlab.train.meap). 0: off.
    meap_mask_fraction: float = Field(0.0, ge=0, lt=1)
    eval_every: int = Field(100, gt=0)
    eval_examples: int = Field(512, gt=0)
    target_accuracy: float | None = Field(None, gt=0, le=1)  # early stop once reached at an evaluation
    # fp32, or autocast to bf16 / fp16 on the device (fp16 with a gradient scaler): attnlab.train.device. Its
    # canonical JSON keeps the older ``bf16`` flag (``"bf16": false`` for fp32), so run ids from before stay.
    precision: Precision = "fp32"
    # torch.compile the model for the training steps (evaluation runs eager). `attnlab speed` measures it on the
    # bench model; on the 2-core CPU its gain did not hold up across runs and a cold compile took ~40 s (README).
    compile: bool = False
    # auto | cpu | cuda | cuda:N | mps; one not present here is a ConfigError naming those that are
    device: str = "cpu"
    # Length extrapolation: after training, evaluate the task at round(f · T) for each factor f (the task needs
    # with_length); final metrics loss@{f}x, accuracy@{f}x (NaN where the model cannot represent the length).
    extrapolate: list[Annotated[float, Field(gt=0)]] = []
    # The same evaluation with the trained weights under other relative position encodings (RoPE-scaling methods:
    # rope_ntk_dynamic, rope_pi, yarn, ... with their default arguments, the training length from the model), at
    # the training length and each factor: final metrics loss@{f}x[name], accuracy@{f}x[name]. One training run
    # instead of one per encoding (attnlab.model.positions.with_position).
    extrapolate_positions: list[str] = []
    # Stop at this step while following the schedule (warmup, cosine) of ``steps``, and hand back the whole
    # training state, so a run of the same config with a later stop_at (or none) continues from it exactly: the
    # learning-rate search's intermediate rungs (attnlab.runner.search). None: train to ``steps``. It must be an
    # evaluation step (a multiple of eval_every), so the metric a rung ranks by is a point of the full run's curve.
    stop_at: int | None = Field(None, gt=0)
    # At each evaluation, the runner also probes the model (attnlab.lens.probes: per-layer max attention logit,
    # entropy, sink rate, induction score, activation outliers, output logits), stored as curves ``probe/…``.
    probes: bool = False
    # Keep the weights at steps N, 2N, 4N, … (N = checkpoint_every, a multiple of eval_every; thinned
    # geometrically, as what changes early changes fast), so ``attnlab inspect RUN_ID --step S`` can read them.
    checkpoint_every: int | None = Field(None, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _legacy_bf16(cls, data: Any) -> Any:
        """Read the older ``bf16`` flag (a stored config, or ``TrainConfig(bf16=True)``) as ``precision``."""
        if not isinstance(data, dict) or "bf16" not in data:
            return data
        data = dict(data)
        bf16 = data.pop("bf16")
        if not isinstance(bf16, bool):
            raise ConfigError("bf16", bf16, "not a boolean (prefer precision)", [False, True])
        precision = data.get("precision", "bf16" if bf16 else "fp32")
        if bf16 != (precision == "bf16"):
            raise ConfigError("bf16", bf16, f"contradicts precision={precision!r}", "precision alone")
        data["precision"] = precision
        return data

    @field_validator("device")
    @classmethod
    def _present(cls, device: str) -> str:
        return check_device(device)

    @field_validator("extrapolate")
    @classmethod
    def _distinct(cls, factors: list[float]) -> list[float]:
        """Each factor once: its metrics are named by it (``loss@2x``)."""
        for i, factor in enumerate(factors):
            if factor in factors[:i]:
                raise ConfigError("extrapolate", factors, f"factor {factor:g} is given twice", "distinct factors")
        return factors

    @model_validator(mode="after")
    def _positions_need_factors(self) -> TrainConfig:
        """``extrapolate_positions``: distinct names, and factors to evaluate them at (the entries are checked
        against the registry when the model is swapped, where the position registry is loaded)."""
        names = self.extrapolate_positions
        for i, name in enumerate(names):
            if name in names[:i]:
                raise ConfigError("extrapolate_positions", names, f"{name!r} is given twice", "distinct names")
        if names and not self.extrapolate:
            raise ConfigError("extrapolate_positions", names, "needs length factors", "set extrapolate too")
        return self

    @model_validator(mode="after")
    def _stop_within_steps(self) -> TrainConfig:
        """``stop_at`` is an evaluation step up to ``steps``; equal to ``steps`` it is the whole run (None), so a
        run has one id however its end is written. ``checkpoint_every`` is an evaluation step too."""
        if self.checkpoint_every is not None and self.checkpoint_every % self.eval_every:
            allowed = f"a multiple of eval_every={self.eval_every}, so each kept step has its evaluation"
            raise ConfigError("checkpoint_every", self.checkpoint_every, "is not an evaluation step", allowed)
        if self.stop_at is None:
            return self
        if self.stop_at > self.steps:
            raise ConfigError("stop_at", self.stop_at, f"is beyond steps={self.steps}", f"1 to {self.steps}")
        if self.stop_at % self.eval_every and self.stop_at != self.steps:
            allowed = f"a multiple of eval_every={self.eval_every}"
            raise ConfigError("stop_at", self.stop_at, "is not an evaluation step", allowed)
        if self.stop_at == self.steps:
            object.__setattr__(self, "stop_at", None)  # frozen model: normalised once, while it is validated
        return self

    @model_serializer(mode="wrap")
    def _omit_later_defaults(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """Dump without ``extrapolate`` and ``extrapolate_positions`` when empty, ``compile``, ``z_loss``,
        ``meap_mask_fraction`` and ``probes`` when off, ``stop_at`` and ``checkpoint_every`` when None, and
        ``precision`` as the older ``bf16`` flag unless fp16, so configs (and run ids) from before those fields existed
        keep their canonical JSON and a resumed sweep finds its finished runs."""
        data = handler(self)
        data["bf16"] = self.precision == "bf16"
        if self.precision != "fp16":
            data.pop("precision", None)
        if not self.extrapolate:
            data.pop("extrapolate", None)
        if not self.extrapolate_positions:
            data.pop("extrapolate_positions", None)
        if not self.compile:
            data.pop("compile", None)
        if not self.z_loss:
            data.pop("z_loss", None)
        if not self.meap_mask_fraction:
            data.pop("meap_mask_fraction", None)
        if self.stop_at is None:
            data.pop("stop_at", None)
        if not self.probes:
            data.pop("probes", None)
        if self.checkpoint_every is None:
            data.pop("checkpoint_every", None)
        return data
