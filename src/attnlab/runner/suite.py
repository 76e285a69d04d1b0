"""``Suite``: several sweeps run as one, each with its own grid and training budget.

A benchmark suite mixes tasks that need different budgets (a language model trains longer than MQAR) and
different model kinds (an encoder for sorting, an encoder-decoder for reversal), so one grid does not fit
them all. A ``Suite`` is a named list of ``Sweep`` parts; its runs are the union of the parts' runs, all
tagged with the suite's name, so they land in one database, one leaderboard and one report.

Parts built with ``Sweep(..., skip_unsupported=True)`` drop the grid points a mechanism cannot serve
(e.g. Based has no cross-attention, so it sits out the encoder-decoder task); ``Suite.skipped()`` lists them.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from attnlab.config import StrictModel
from attnlab.errors import ConfigError
from attnlab.runner.config import RunConfig, Sweep


class Suite(StrictModel):
    name: str
    parts: list[Sweep] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique(self) -> Suite:
        seen: dict[str, str] = {}
        for part in self.parts:
            for run in part.runs():
                if run.run_id in seen:
                    raise ConfigError(
                        "parts", part.name, f"repeats run {run.run_id} of part {seen[run.run_id]!r}", "disjoint grids"
                    )
                seen[run.run_id] = part.name
        return self

    @property
    def tasks(self) -> list:
        """Every task of every part, in order, without repeats (by name and config)."""
        out, seen = [], set()
        for part in self.parts:
            for task in part.tasks:
                key = task.model_dump_json()
                if key not in seen:
                    seen.add(key)
                    out.append(task)
        return out

    def runs(self) -> list[RunConfig]:
        """All parts' runs, tagged with the suite's name (the tag is not part of a run's identity)."""
        return [run.model_copy(update={"sweep": self.name}) for part in self.parts for run in part.runs()]

    def skipped(self) -> list[str]:
        """One line per grid point a part dropped because the mechanism does not support it."""
        return [line for part in self.parts for line in part.skipped()]
