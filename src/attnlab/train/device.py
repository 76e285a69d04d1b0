"""Where training runs and in which precision: ``TrainConfig.device`` and ``TrainConfig.precision``.

``device`` is ``auto`` | ``cpu`` | ``cuda`` | ``cuda:N`` | ``mps``. A device that is not present is rejected when
the config is built, in one line naming the devices that are (``devices_present``); ``auto`` resolves to CUDA when
present, else MPS, else the CPU (``resolve_device``).

``precision`` is ``fp32`` | ``bf16`` | ``fp16``: bf16 and fp16 run the forward pass under ``torch.autocast`` on
the device (``autocast``); fp16 also scales the loss with ``torch.amp.GradScaler`` (``grad_scaler``), since its
5-bit exponent underflows small gradients (Micikevicius et al., "Mixed Precision Training", arXiv:1710.03740).
"""

from __future__ import annotations

import re
from typing import Literal

import torch

from attnlab.errors import ConfigError

Precision = Literal["fp32", "bf16", "fp16"]
AUTOCAST_DTYPES: dict[str, torch.dtype] = {"bf16": torch.bfloat16, "fp16": torch.float16}
DEVICE_FORM = re.compile(r"^(auto|cpu|cuda|cuda:\d+|mps)$")


def mps_present() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def devices_present() -> list[str]:
    """The values of ``TrainConfig.device`` this machine can run: auto, cpu, then cuda, cuda:0… and mps."""
    present = ["auto", "cpu"]
    if torch.cuda.is_available():
        present += ["cuda", *(f"cuda:{i}" for i in range(torch.cuda.device_count()))]
    if mps_present():
        present.append("mps")
    return present


def check_device(value: str, field: str = "device") -> str:
    """``value`` when it names a device present here, else a one-line ``ConfigError``."""
    if value in ("auto", "cpu"):  # present everywhere: no need to ask CUDA
        return value
    present = devices_present()
    if not DEVICE_FORM.match(value):
        raise ConfigError(field, value, "not a device (auto, cpu, cuda, cuda:N or mps)", present)
    if value not in present:
        raise ConfigError(field, value, "not available here", present)
    return value


def resolve_device(value: str) -> torch.device:
    """The ``torch.device`` of a checked ``TrainConfig.device``: ``auto`` is cuda, else mps, else cpu."""
    if value == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if mps_present() else torch.device("cpu")
    return torch.device(value)


def autocast(device: torch.device, precision: Precision) -> torch.autocast:
    """Autocast to bf16 / fp16 on ``device``; a disabled (no-op) context for fp32."""
    dtype = AUTOCAST_DTYPES.get(precision, torch.bfloat16)
    return torch.autocast(device_type=device.type, dtype=dtype, enabled=precision != "fp32")


def grad_scaler(device: torch.device, precision: Precision) -> torch.amp.GradScaler:
    """A loss scaler for fp16 (dynamic scale, skips steps with inf / NaN gradients); disabled otherwise."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")
