"""Sweep presets: each module exports ``SWEEP`` (a ``Sweep`` or a ``Suite`` of sweeps). ``load_sweep`` also
accepts a path to a Python file, imported as a plugin: the entries it registers (its own normaliser, say) remember
the file, and every run that uses them records it, so the workers import it too (``attnlab.plugins``)."""

from __future__ import annotations

import importlib
import pkgutil
import traceback
from pathlib import Path
from types import ModuleType

from attnlab.errors import ConfigError
from attnlab.plugins import import_plugin, load_plugins
from attnlab.runner.config import Sweep
from attnlab.runner.suite import Suite


def preset_names() -> list[str]:
    return sorted(m.name.replace("_", "-") for m in pkgutil.iter_modules(__path__))


def load_sweep(name_or_path: str) -> Sweep | Suite:
    """A preset name (``quick``) or a Python file that defines ``SWEEP`` (a ``Sweep`` or a ``Suite``)."""
    path = Path(name_or_path)
    load_plugins()  # installed plugins first: a sweep may use their entries
    if path.suffix == ".py":
        if not path.is_file():
            raise ConfigError("sweep", name_or_path, "no such file")
        module = _run_sweep_file(path)
    elif name_or_path in preset_names():
        module = importlib.import_module(f"attnlab.sweeps.{name_or_path.replace('-', '_')}")
    else:
        raise ConfigError("sweep", name_or_path, "not a preset nor a .py file", preset_names())
    sweep = getattr(module, "SWEEP", None)
    if not isinstance(sweep, Sweep | Suite):
        raise ConfigError("sweep", name_or_path, "the file must define SWEEP = Sweep(...) or Suite(...)")
    return sweep


def _run_sweep_file(path: Path) -> ModuleType:
    """Execute a user's sweep file (once per process); its mistakes become one line naming the file and the line.

    A ``ConfigError`` raised while it builds its ``Sweep`` already names the field and passes through; any other
    exception, a syntax error included, is reported with the file's own line that raised it.
    """
    try:
        return import_plugin(str(path))
    except ConfigError:
        raise
    except SyntaxError as err:
        where = f"{path}:{err.lineno}" if err.lineno else str(path)
        raise ConfigError("sweep", where, f"syntax error: {err.msg}", "a Python file that defines SWEEP") from None
    except Exception as err:
        frames = [f for f in traceback.extract_tb(err.__traceback__) if Path(f.filename).resolve() == path.resolve()]
        where = f"{path}:{frames[-1].lineno}" if frames else str(path)
        problem = f"raised {type(err).__name__}: {err}"
        raise ConfigError("sweep", where, problem, "a Python file that defines SWEEP") from None
