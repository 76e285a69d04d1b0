"""A claim: a paper's headline, the CPU-scale experiment that tests it, and the rule that decides it.

Two kinds of experiment:

- ``SweepExperiment``: a sweep (or suite) run by attnlab's runner into the results database, so it resumes like
  any sweep; the effect compares two arms (runs selected by task and mechanism label), each at its best learning
  rate by the claim's metric, over the seeds both finished: ``a − b`` or ``a / b`` per seed, with a Student-t
  interval over seeds. Without ``b`` the effect is ``a``'s own value.
- ``FunctionExperiment``: a function (a lens experiment on a pretrained model, a measurement of bytes or of time)
  returning a ``Measurement``; its result is kept in the database under the claim's name and version, so a second
  ``attnlab claims run`` reuses it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from attnlab.claims.verdict import Effect, Rule
from attnlab.runner.config import Sweep
from attnlab.runner.suite import Suite
from attnlab.stats.intervals import t_interval


@dataclass(frozen=True)
class Paper:
    """A source paper: how the claims table names it and where to read it."""

    title: str
    authors: str
    year: int
    arxiv: str
    code: str = ""  # the authors' repository, when there is one

    @property
    def short(self) -> str:
        """``"Ramapuram et al. 2024"``."""
        return f"{self.authors} {self.year}"


@dataclass(frozen=True)
class Arm:
    """One side of a comparison: the runs with this mechanism label, on a task and with a position encoding
    (any, when None)."""

    mechanism: str
    task: str | None = None
    position: str | None = None

    def matches(self, task: str, mechanism: str, position: str) -> bool:
        return (
            mechanism == self.mechanism
            and (self.task is None or task == self.task)
            and (self.position is None or position == self.position)
        )

    def describe(self) -> str:
        return (
            self.mechanism
            + (f" / {self.position}" if self.position else "")
            + (f" on {self.task}" if self.task else "")
        )


@dataclass(frozen=True)
class Measurement:
    """What a function experiment measured: per-seed values of the effect, or one exact value; ``rows`` are the
    details the report shows (one dict per row), ``series`` what it plots (label → [(x, y)])."""

    values: dict[int, float] = field(default_factory=dict)
    exact: float | None = None
    rows: list[dict[str, object]] = field(default_factory=list)
    series: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    xlabel: str = ""
    ylabel: str = ""

    def to_json(self) -> dict[str, object]:
        return {**asdict(self), "values": {str(k): v for k, v in self.values.items()}}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Measurement:
        series = {k: [(float(x), float(y)) for x, y in v] for k, v in data.get("series", {}).items()}
        values = {int(k): float(v) for k, v in data.get("values", {}).items()}
        return cls(**{**data, "values": values, "series": series})

    def effect(self, level: float = 0.95) -> Effect:
        """The effect and its interval: exact, or the t interval over the seeds' values."""
        if self.exact is not None:
            return Effect.of_value(self.exact)
        return seeded_effect(self.values, level)


def seeded_effect(values: dict[int, float], level: float = 0.95) -> Effect:
    """The mean of per-seed values with its Student-t interval (NaNs, failed runs, left out)."""
    interval = t_interval(values.values(), level)
    return Effect(interval.mean, interval.low, interval.high, interval.n)


Rows = list[dict[str, Any]]
Curves = dict[str, list[tuple[int, str, float]]]


@dataclass(frozen=True)
class SweepExperiment:
    """A sweep and the comparison that makes its effect (see the module docstring); or, with ``derive``, any
    measurement computed from the sweep's finished result rows and their curves (an emergence step, a layer order)."""

    sweep: Sweep | Suite
    metric: str = ""  # a final metric of the runs: "loss", "accuracy", "loss@16x", ...
    a: Arm | None = None
    b: Arm | None = None
    combine: Literal["difference", "ratio"] = "difference"
    derive: Callable[[Rows, Curves], Measurement] | None = None

    def __post_init__(self) -> None:
        if self.derive is None and (self.a is None or not self.metric):
            raise ValueError("a SweepExperiment needs a metric and an arm, or a derive function")

    @property
    def name(self) -> str:
        return self.sweep.name


@dataclass(frozen=True)
class FunctionExperiment:
    """``run()`` → a ``Measurement``; ``version`` changes when the function's meaning does (a new result)."""

    def measurement_of(self, stored: Measurement) -> Measurement:
        """What this claim reads of the stored measurement."""
        return stored if self.view is None else self.view(stored)

    run: Callable[[], Measurement]
    version: str = "1"
    seeds: str = "none: an exact measurement"
    # Several claims may read one measurement (one set of trained models): they share its storage ``key`` and
    # each derives its own effect from it with ``view``.
    key: str | None = None
    view: Callable[[Measurement], Measurement] | None = None


Experiment = SweepExperiment | FunctionExperiment


@dataclass(frozen=True)
class Claim:
    """One headline claim of one paper, with its experiment and verdict rule (fixed before it runs)."""

    name: str
    paper: Paper
    statement: str  # the claim in one sentence, paraphrased
    where: str  # the section or figure of the paper
    experiment: Experiment
    rule: Rule
    scale_note: str = ""  # how this test differs from the paper's setting, and why scale may matter

    @property
    def seeds(self) -> str:
        """The seeds a sweep claim runs (``"0, 1, 2"``); ``"exact"`` for a measurement no seed changes."""
        experiment = self.experiment
        if isinstance(experiment, SweepExperiment):
            parts = experiment.sweep.parts if isinstance(experiment.sweep, Suite) else [experiment.sweep]
            return ", ".join(str(s) for s in sorted({s for p in parts for s in p.seeds}))
        return experiment.seeds

    @property
    def command(self) -> str:
        return f"attnlab claims run {self.name}"
