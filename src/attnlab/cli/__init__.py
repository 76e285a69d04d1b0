"""The ``attnlab`` command line, one module per command group and one error guard.

- ``main``: the typer ``app`` that mounts every group (``attnlab = "attnlab.cli:app"`` in pyproject.toml);
- ``zoo``: ``zoo`` and ``docs``; ``sweeps``: ``run``, ``demo``, ``presets``, ``leaderboard``, ``report``,
  ``export``; ``compare``: ``compare``; ``inspect``: ``inspect``; ``data``: ``data build|list``; ``intervene`` and
  ``experiments``: ``intervene ablate|scale|pear|act|kv-eviction|rope-scaling|sinks``; ``speed``: ``speed``;
- ``guard``: a user's mistake (``ConfigError``) becomes one line ``error: field=value: problem (allowed: ...)``
  and exit status 2; ``options``: option values read the same way by every group; ``console``: the output.
"""

from attnlab.cli.main import app
from attnlab.cli.zoo import zoo_markdown

__all__ = ["app", "zoo_markdown"]
