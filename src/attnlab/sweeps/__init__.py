"""Sweep presets: each module exports ``SWEEP`` (a ``Sweep`` or a ``Suite`` of sweeps). ``load_sweep`` also
accepts a path to a Python file."""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
from pathlib import Path

from attnlab.errors import ConfigError
from attnlab.runner.config import Sweep
from attnlab.runner.suite import Suite


def preset_names() -> list[str]:
    return sorted(m.name.replace("_", "-") for m in pkgutil.iter_modules(__path__))


def load_sweep(name_or_path: str) -> Sweep | Suite:
    """A preset name (``quick``) or a Python file that defines ``SWEEP`` (a ``Sweep`` or a ``Suite``)."""
    path = Path(name_or_path)
    if path.suffix == ".py":
        if not path.is_file():
            raise ConfigError("sweep", name_or_path, "no such file")
        spec = importlib.util.spec_from_file_location(f"attnlab_user_sweep_{path.stem}", path)
        if spec is None or spec.loader is None:
            raise ConfigError("sweep", name_or_path, "cannot be imported as a Python file")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    elif name_or_path in preset_names():
        module = importlib.import_module(f"attnlab.sweeps.{name_or_path.replace('-', '_')}")
    else:
        raise ConfigError("sweep", name_or_path, "not a preset nor a .py file", preset_names())
    sweep = getattr(module, "SWEEP", None)
    if not isinstance(sweep, Sweep | Suite):
        raise ConfigError("sweep", name_or_path, "the file must define SWEEP = Sweep(...) or Suite(...)")
    return sweep
