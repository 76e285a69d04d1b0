"""Learning-rate sensitivity, the measure of "Small-scale proxies for large-scale Transformer training instabilities"
(Wortsman et al. 2023, arXiv:2309.14322, §2.2): how much final loss a model loses over a range of learning rates,

    LR sensitivity = E_{η ∈ grid} [ min(ℓ(η), ℓ₀) − ℓ* ],

with ℓ(η) the final loss at learning rate η (a run that diverged or failed counts as ℓ₀), ℓ₀ the loss of the
untrained model, taken here as that of the uniform predictor, ln V, which a small initialisation approximates,
and ℓ* the best final loss over the grid. Lower is better: a model that trains well over a wide range of learning
rates has a small one. The paper's instabilities at high learning rates — attention-logit growth (removed by
qk-layernorm) and output-logit divergence (removed by z-loss) — show in the ``probe/max_logit`` and
``probe/log_z`` curves the runs record with ``train.probes``.

This module reads a results database (the ``lr-sensitivity`` preset, or any sweep over learning rates) and groups
its runs by width and variant: the qk-norm in the mechanism's label and the run's z-loss weight.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from attnlab.errors import ConfigError


@dataclass(frozen=True)
class Point:
    """One run: its learning rate, final loss (NaN when it failed), and the largest attention logit and log Z its
    probes saw at their last evaluation (NaN without probes)."""

    lr: float
    loss: float
    max_logit: float
    log_z: float


@dataclass(frozen=True)
class Curve:
    """One (width, variant) over the learning-rate grid, with the loss of the untrained model (ln V)."""

    width: int
    variant: str
    points: tuple[Point, ...]
    initial_loss: float

    @property
    def sensitivity(self) -> float:
        """E over the grid of min(ℓ(η), ℓ₀) − ℓ*, a failed or non-finite run counting as ℓ₀."""
        capped = [min(p.loss, self.initial_loss) if math.isfinite(p.loss) else self.initial_loss for p in self.points]
        return sum(capped) / len(capped) - min(capped)

    @property
    def best(self) -> Point:
        """The point with the lowest final loss (the smaller learning rate on a tie)."""
        finite = [p for p in self.points if math.isfinite(p.loss)]
        return min(finite or self.points, key=lambda p: (p.loss if math.isfinite(p.loss) else math.inf, p.lr))


def lr_sensitivity(values: Iterable[float], initial_loss: float) -> float:
    """The measure for a list of final losses over a grid (NaN or inf: a diverged run, counted as ``initial_loss``)."""
    losses = list(values)
    if not losses:
        raise ConfigError("losses", losses, "needs at least one run")
    return Curve(0, "", tuple(Point(i, v, math.nan, math.nan) for i, v in enumerate(losses)), initial_loss).sensitivity


def variant_of(row: dict[str, Any]) -> str:
    """``qk-norm`` / ``plain`` from the attention config, ``+ z-loss`` when the run's weight is positive."""
    config = json.loads(row["config"])
    qk = config.get("model", {}).get("attention", {}).get("qk_norm")
    z = config.get("train", {}).get("z_loss", 0.0)
    return ("qk-norm" if qk else "plain") + (f" + z-loss {z:g}" if z else "")


def _last(curves: list[tuple[int, str, float]], prefix: str) -> float:
    """The largest value over layers of a probe at its last step (NaN without it)."""
    points = [(s, v) for s, n, v in curves if n.startswith(prefix)]
    if not points:
        return math.nan
    last = max(s for s, _ in points)
    return max(v for s, v in points if s == last)


def sensitivity_curves(rows: list[dict[str, Any]], curves: dict[str, list[tuple[int, str, float]]]) -> list[Curve]:
    """The (width, variant) curves of finished or failed full runs of one task (``Store.runs`` rows, curves by run
    id); more than one seed at a learning rate is averaged."""
    tasks = {r["task"] for r in rows}
    if len(tasks) != 1:
        raise ConfigError("task", sorted(tasks), "a sensitivity curve compares runs of one task", "one task")
    grouped: dict[tuple[int, str], dict[float, list[Point]]] = defaultdict(lambda: defaultdict(list))
    vocab: dict[int, int] = {}
    for row in rows:
        if row["status"] not in ("done", "failed"):
            continue
        config = json.loads(row["config"])
        if config.get("train", {}).get("stop_at") is not None:
            continue  # a search's intermediate rung
        vocab[row["width"]] = config["model"]["vocab_size"]
        run_curves = curves.get(row["run_id"], [])
        loss = row["final"].get("loss", math.nan) if row["status"] == "done" else math.nan
        point = Point(row["lr"], loss, _last(run_curves, "probe/max_logit/"), _last(run_curves, "probe/log_z"))
        grouped[(row["width"], variant_of(row))][row["lr"]].append(point)
    out = []
    for (width, variant), by_lr in sorted(grouped.items()):
        points = tuple(
            Point(lr, *(_mean([getattr(p, f) for p in ps]) for f in ("loss", "max_logit", "log_z")))
            for lr, ps in sorted(by_lr.items())
        )
        out.append(Curve(width, variant, points, math.log(vocab[width])))
    return out


def _mean(values: list[float]) -> float:
    """The mean; NaN when any value is NaN (a failed seed makes the learning rate count as failed)."""
    return math.nan if any(math.isnan(v) for v in values) else sum(values) / len(values)
