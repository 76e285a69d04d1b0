"""Sweeps: configs, the results database, the local process-pool backend and the Ray backend.

``run_ray`` imports Ray only when it is called: importing attnlab never needs Ray.
"""

from attnlab.runner.config import RunConfig, Sweep
from attnlab.runner.local import SweepSummary, run_local
from attnlab.runner.ray_backend import run_ray
from attnlab.runner.store import Store

__all__ = ["RunConfig", "Store", "Sweep", "SweepSummary", "run_local", "run_ray"]
