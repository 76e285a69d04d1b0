"""``RunConfig`` (one training run) and ``Sweep`` (a grid of them), both strict pydantic models.

A run's id is the sha1 of its canonical JSON, so the same config is the same run wherever it is
expanded: a restarted sweep finds its finished runs by id and skips them.

A run whose entries come from outside attnlab (a sweep file's own normaliser, an installed plugin) records what
defines them in ``plugins`` (``{"normaliser:softmax1": "/path/to/sweep.py"}``), filled in from the registries, and
a worker imports those before it builds the run (``run_from_json``). Like ``sweep``, ``plugins`` says where the code
is found, not what the run is: it is not part of the run's id, and the JSON of a run without plugins has no
``plugins`` key (so the ids and stored configs of zoo-only runs are those of earlier versions).
"""

from __future__ import annotations

import itertools
import json
from typing import Any, Literal

from pydantic import Field, SerializeAsAny, ValidationError, field_validator, model_validator

from attnlab.attention import HEADS, NORMALISERS
from attnlab.attention.config import AttentionConfig
from attnlab.attention.linear.feature_maps import FEATURE_MAPS
from attnlab.config import StrictModel, config_error
from attnlab.errors import ConfigError
from attnlab.model.config import ModelConfig
from attnlab.model.positions import check_positions
from attnlab.plugins import import_needed, load_plugins, needed
from attnlab.position import POSITIONS
from attnlab.stats.halving import log_grid
from attnlab.tasks import TASKS, TaskConfig, task_from_dict
from attnlab.tasks.base import extrapolation_tasks
from attnlab.train.config import TrainConfig
from attnlab.train.meap import model_vocab


class RunConfig(StrictModel):
    task: SerializeAsAny[TaskConfig]
    model: ModelConfig
    train: TrainConfig = TrainConfig()
    seed: int = 0
    sweep: str = ""  # the sweep that asked for it; not part of the run's identity
    # what defines its entries that are not attnlab's own ("normaliser:softmax1" → module or .py file); not part
    # of the run's identity. Filled in from the registries unless given.
    plugins: dict[str, str] = Field(default_factory=lambda data: _plugins_of(data.get("model"), data.get("task")))

    @field_validator("task", mode="before")
    @classmethod
    def _task(cls, value: Any) -> TaskConfig:
        return task_from_dict(value)

    @model_validator(mode="after")
    def _fits_task(self) -> RunConfig:
        if self.model.vocab_size < self.task.vocab_size:
            raise ConfigError(
                "model.vocab_size",
                self.model.vocab_size,
                f"smaller than the task's vocabulary ({self.task.vocab_size})",
            )
        needed = model_vocab(self.task.vocab_size, self.train.meap_mask_fraction)
        if self.model.vocab_size < needed:
            problem = f"MEAP masks with the reserved id {self.task.vocab_size}: the model needs {needed} ids"
            raise ConfigError("model.vocab_size", self.model.vocab_size, problem, f"{needed} …")
        if self.task.mode != self.model.mode:
            raise ConfigError(
                "model.mode",
                self.model.mode,
                f"task {self.task.name!r} needs a {self.task.mode} model",
                [self.task.mode],
            )
        extrapolation_tasks(self.task, self.train.extrapolate, "train.extrapolate")
        check_positions(self.model.attention.position, self.train.extrapolate_positions)
        return self

    def canonical_json(self) -> str:
        """The config as sorted, compact JSON; ``plugins`` only when there are any."""
        exclude = None if self.plugins else {"plugins"}
        return json.dumps(self.model_dump(mode="json", exclude=exclude), sort_keys=True, separators=(",", ":"))

    @property
    def run_id(self) -> str:
        return self.model_copy(update={"sweep": "", "plugins": {}}).digest()[:16]

    def stopped_at(self, step: int, lr: float | None = None, seed: int | None = None) -> RunConfig:
        """This run trained to ``step`` of its schedule (``train.stop_at``; the whole run when ``step`` is
        ``train.steps``), with another learning rate or seed when given: a trial of the learning-rate search."""
        train = TrainConfig(**{**dict(self.train), "lr": self.train.lr if lr is None else lr, "stop_at": step})
        return self.model_copy(update={"train": train, "seed": self.seed if seed is None else seed})

    @property
    def mechanism(self) -> str:
        return self.model.attention.label

    @property
    def position(self) -> str:
        return self.model.attention.position


def _plugins_of(model: Any, task: Any) -> dict[str, str]:
    """The plugins that define the entries of a run's model and task (none for attnlab's own entries)."""
    if not isinstance(model, ModelConfig) or not isinstance(task, TaskConfig):
        return {}  # the field that failed validation is reported instead
    att = model.attention
    used = [(NORMALISERS, att.normaliser), (HEADS, att.heads), (POSITIONS, att.position), (TASKS, task.name)]
    if att.edge_normaliser is not None:
        used.append((NORMALISERS, att.edge_normaliser))
    feature_map = att.normaliser_args.get("feature_map")
    if isinstance(feature_map, str):
        used.append((FEATURE_MAPS, feature_map))
    return needed(used)


def run_from_json(config_json: str, where: str = "this process") -> RunConfig:
    """A run from its JSON, its plugins imported first (``where`` names the process in error messages).

    Installed plugins are loaded, then the run's own; a plugin that cannot be imported, an entry it does not
    register and any other invalid field are one-line ``ConfigError``s.
    """
    try:
        data = json.loads(config_json)
    except json.JSONDecodeError as exc:
        raise ConfigError("config", config_json[:80], f"not JSON: {exc}") from None
    plugins = data.get("plugins", {}) if isinstance(data, dict) else {}
    load_plugins()
    import_needed(plugins if isinstance(plugins, dict) else {}, where)
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        raise config_error(exc, "RunConfig", RunConfig) from None


class SearchConfig(StrictModel):
    """A learning-rate search by successive halving (``attnlab.stats.halving``; run by ``attnlab.runner.search``).

    The grid is ``lrs`` itself or ``points`` values spaced evenly in log from ``low`` to ``high``
    (``log_grid``). Every learning rate trains, over the sweep's seeds, to ``min_steps``; the best 1/``eta`` of
    them continue from their checkpoints to ``eta``·``min_steps``, and so on up to the sweep's ``train.steps``.
    """

    lrs: list[float] = []
    low: float | None = None
    high: float | None = None
    points: int | None = None
    min_steps: int = Field(gt=0)
    eta: int = Field(3, ge=2)
    # What ranks the learning rates at each rung: the evaluation loss (default), or the task's own metric (accuracy,
    # or a language model's loss). A short rung of a task learned in a sudden transition (MQAR, induction) leaves
    # accuracy at chance for every learning rate, so ranking by it is a coin toss; the loss, a proper scoring rule,
    # has already moved (`make demo`'s first rung, 300 steps: sigmoid's accuracy 0.251–0.275 at lr 1e-3 and 3e-3,
    # its mean loss 1.785 against 1.590). ASHA ranks by validation loss too (Li et al. 2020, arXiv:1810.05934).
    rank_by: Literal["loss", "task"] = "loss"

    @model_validator(mode="after")
    def _one_grid(self) -> SearchConfig:
        ranged = (self.low, self.high, self.points)
        if self.lrs and any(v is not None for v in ranged):
            raise ConfigError("lrs", self.lrs, "given with low / high / points", "either lrs or low, high and points")
        if not self.lrs and any(v is None for v in ranged):
            raise ConfigError("low", self.low, "a grid needs low, high and points (or lrs)", "e.g. 1e-4, 1e-2, 9")
        self.grid  # noqa: B018 - validates the grid (positive, distinct, enough points)
        return self

    @property
    def grid(self) -> tuple[float, ...]:
        """The learning rates searched, smallest first."""
        if self.lrs:
            if any(not lr > 0 for lr in self.lrs) or len(set(self.lrs)) != len(self.lrs):
                raise ConfigError("lrs", self.lrs, "must be distinct positive learning rates", "e.g. [1e-3, 3e-3]")
            return tuple(sorted(self.lrs))
        assert self.low is not None and self.high is not None and self.points is not None
        return log_grid(self.low, self.high, self.points)


class Sweep(StrictModel):
    """A grid: tasks × mechanisms × positions × widths × learning rates × seeds.

    ``mechanisms`` are attention configs (their ``position`` is replaced by each of ``positions``
    unless ``positions`` is empty). ``model`` holds the other ModelConfig fields (depth, heads, MLP);
    vocabulary and training length come from each task.

    With ``search``, the learning rates are not a grid axis but searched per (task, mechanism, position, width)
    by successive halving (``attnlab.runner.search``): ``lrs`` is left out, ``runs()`` are the search's first
    rung, and the later rungs are planned from their results.
    """

    name: str
    tasks: list[SerializeAsAny[TaskConfig]]
    mechanisms: list[AttentionConfig] = Field(min_length=1)
    positions: list[str] = []
    widths: list[int] = Field([64], min_length=1)
    lrs: list[float] = Field([1e-3], min_length=1)
    seeds: list[int] = Field([0], min_length=1)
    model: dict[str, Any] = {}
    train: TrainConfig = TrainConfig()
    # True: drop the grid points a mechanism cannot serve (listed by ``skipped()``) instead of rejecting the sweep.
    skip_unsupported: bool = False
    search: SearchConfig | None = None

    @field_validator("tasks", mode="before")
    @classmethod
    def _tasks(cls, value: Any) -> list[TaskConfig]:
        if not isinstance(value, list) or not value:
            raise ConfigError("tasks", value, "a sweep needs a non-empty list of tasks")
        return [task_from_dict(t) for t in value]

    @field_validator("positions")
    @classmethod
    def _positions(cls, value: list[str]) -> list[str]:
        for p in value:
            POSITIONS.entry(p)
        return value

    @model_validator(mode="after")
    def _expands(self) -> Sweep:
        for key in ("vocab_size", "d_model", "attention", "max_seq_len"):
            if key in self.model:
                raise ConfigError(f"model.{key}", self.model[key], "is set by the sweep's axes, not in model")
        if self.search is not None:
            self._check_search(self.search)
        runs, _ = self._expand()  # every point of the grid must be a valid run (or be skippable)
        if not runs:
            raise ConfigError("sweep", self.name, "every point of the grid is unsupported", self.skipped())
        return self

    def _check_search(self, search: SearchConfig) -> None:
        if "lrs" in self.model_fields_set:
            raise ConfigError("lrs", self.lrs, "is set by search (its grid)", ["leave lrs out"])
        if self.train.stop_at is not None:
            raise ConfigError("train.stop_at", self.train.stop_at, "is set by search (its rungs)", [None])
        if search.min_steps > self.train.steps:
            allowed = f"1 to train.steps={self.train.steps}"
            raise ConfigError("search.min_steps", search.min_steps, "is beyond the training steps", allowed)
        if search.min_steps % self.train.eval_every:
            allowed = f"a multiple of train.eval_every={self.train.eval_every}"
            raise ConfigError("search.min_steps", search.min_steps, "is not an evaluation step", allowed)

    def runs(self) -> list[RunConfig]:
        """The grid's runs; with ``search``, its first rung (every learning rate and seed, to ``min_steps``)."""
        runs = self._expand()[0]
        if self.search is None:
            return runs
        return [run.stopped_at(self.search.min_steps) for run in runs]

    def grid_runs(self) -> list[RunConfig]:
        """Every point of the grid trained to ``train.steps`` (with ``search``: every learning rate of its grid)."""
        return self._expand()[0]

    def skipped(self) -> list[str]:
        """The grid points dropped by ``skip_unsupported``: one line each, with the registry's reason."""
        return self._expand()[1]

    def _expand(self) -> tuple[list[RunConfig], list[str]]:
        out: list[RunConfig] = []
        skipped: list[str] = []
        lrs = self.lrs if self.search is None else self.search.grid
        for task, mech, width, lr, seed in itertools.product(self.tasks, self.mechanisms, self.widths, lrs, self.seeds):
            for position in self.positions or [mech.position]:
                attention = (
                    mech
                    if position == mech.position
                    else mech.model_copy(update={"position": position, "position_args": {}})
                )
                try:
                    model = ModelConfig.parse(
                        {
                            **self.model,
                            "vocab_size": model_vocab(task.vocab_size, self.train.meap_mask_fraction),
                            "d_model": width,
                            "max_seq_len": task.seq_len,
                            "mode": task.mode,
                            "attention": attention.model_dump(),
                        }
                    )
                except ConfigError as err:
                    if not self.skip_unsupported:
                        raise
                    line = f"{self.name}: {task.name} × {attention.label} / {position} (d{width}): {err}"
                    if line not in skipped:
                        skipped.append(line)
                    continue
                train = self.train.model_copy(update={"lr": lr})
                out.append(RunConfig(task=task, model=model, train=train, seed=seed, sweep=self.name))
        return out, skipped
