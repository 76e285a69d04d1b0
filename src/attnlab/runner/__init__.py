"""Sweeps: configs, the results database and the local process-pool backend."""

from attnlab.runner.config import RunConfig, Sweep
from attnlab.runner.local import run_local
from attnlab.runner.store import Store

__all__ = ["RunConfig", "Store", "Sweep", "run_local"]
