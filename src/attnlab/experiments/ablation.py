"""Head ablation and head scaling on the copying probe, measured before and after (``attnlab intervene ablate`` and
``attnlab intervene scale``); each experiment returns a dataclass with the numbers and a ``rich`` table.

- ``ablation_experiment``: zero- or mean-ablate heads (by default the top induction heads) and measure the copying
  task; the same number of random heads, ablated the same way, is the control. Ablating induction heads to see
  in-context copying fail is the experiment of Olsson et al., "In-context Learning and Induction Heads" (2022,
  arXiv:2209.11895); mean-ablation replaces a head's output by its mean over a reference batch (Wang et al.,
  "Interpretability in the Wild", 2022, arXiv:2211.00593).
- ``scaling_experiment``: multiply heads' outputs by a list of coefficients (1 is the identity).

The copying task is ``lens.copy_task.CopyTask``: ``[BOS] + x + x``; the copy is scored on the second ``x`` after its
first token (which cannot be inferred by copying), the *first-copy* loss on the first ``x`` after its first token
(the model has not seen these tokens, so this is the no-copying baseline).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from rich.table import Table
from torch import Tensor, nn

from attnlab.errors import ConfigError
from attnlab.experiments.tables import cell, heads_text
from attnlab.lens.copy_task import CopyScores, CopyTask, measure_copy, top_induction_heads
from attnlab.lens.interventions import Head, check_heads, edit_heads, head_means, random_heads, scale_heads

MODES = ("zero", "mean")


# --------------------------------------------------------------------------------------------------- ablation
@dataclass
class AblationRow:
    label: str
    heads: list[Head]
    scores: CopyScores


@dataclass
class AblationResult:
    """Copying before and after ablating ``heads``, and after ablating random heads of the same count."""

    mode: str
    task: CopyTask
    batch: int
    seed: int
    heads: list[Head]
    before: CopyScores
    after: CopyScores
    controls: list[AblationRow] = field(default_factory=list)
    induction_scores: dict[Head, float] = field(default_factory=dict)

    def control_mean(self) -> float:
        """Mean second-copy loss over the random-head controls (nan without controls)."""
        return sum(r.scores.copy_loss for r in self.controls) / len(self.controls) if self.controls else float("nan")

    def rows(self) -> list[AblationRow]:
        """The table's rows: no ablation, the chosen heads, then each random control."""
        return [
            AblationRow("none", [], self.before),
            AblationRow(f"{self.mode}-ablate chosen", self.heads, self.after),
            *self.controls,
        ]

    def table(self) -> Table:
        """Condition, heads, first-copy loss, copy loss, Δ copy loss vs none, copy accuracy."""
        t = Table(
            title=f"{self.mode}-ablation on copying ([BOS] + x + x, |x| = {self.task.n}, batch {self.batch}, "
            f"seed {self.seed})",
            title_justify="left",
        )
        for col in ("condition", "heads", "first-copy loss", "copy loss", "Δ copy loss", "copy acc"):
            t.add_column(col, justify="left" if col in ("condition", "heads") else "right")
        for r in self.rows():
            s = r.scores
            t.add_row(
                cell(r.label),
                cell(heads_text(r.heads) or "-"),
                cell(s.first_loss),
                cell(s.copy_loss),
                f"{s.copy_loss - self.before.copy_loss:+.3f}",
                cell(s.copy_acc),
            )
        return t


def ablation_experiment(
    model: nn.Module,
    heads: Sequence[Head] | None = None,
    *,
    top_k: int = 5,
    mode: str = "zero",
    task: CopyTask | None = None,
    batch: int = 8,
    seed: int = 0,
    random_draws: int = 3,
) -> AblationResult:
    """Ablate ``heads`` (default: the ``top_k`` induction heads) and measure the copying task before / after.

    Seeds: the measured batch uses ``seed``; induction heads are detected on ``seed + 1``; mean-ablation means
    come from a reference batch with ``seed + 2`` (all positions but BOS); random control heads from ``seed + 100
    + i``. ``mode`` is ``zero`` or ``mean``.
    """
    if mode not in MODES:
        raise ConfigError("mode", mode, "unknown ablation", MODES)
    if random_draws < 0:
        raise ConfigError("random_draws", random_draws, "must be >= 0")
    task = task or CopyTask(n=40, low=100, high=20000, bos=1)
    scores: dict[Head, float] = {}
    if heads is None:
        if top_k < 1:
            raise ConfigError("top_k", top_k, "must be at least 1")
        found = top_induction_heads(model, task, top_k, seed + 1, batch=min(batch, 4))
        heads, scores = [h for h, _ in found], dict(found)
    heads = check_heads(model, heads)
    if not heads:
        raise ConfigError("heads", "[]", "nothing to ablate")
    controls = [random_heads(model, len(heads), seed + 100 + i, exclude=heads) for i in range(random_draws)]
    means: dict[Head, Tensor] = {}
    if mode == "mean":
        ref = task.batch(batch, torch.Generator().manual_seed(seed + 2))
        wanted = sorted({*heads, *(h for c in controls for h in c)})
        means = head_means(model, ref, wanted, positions=slice(task.offset, None))

    def run(chosen: Sequence[Head]) -> CopyScores:
        edit = {"zero": chosen} if mode == "zero" else {"mean": {h: means[h] for h in chosen}}
        with edit_heads(model, **edit):
            return measure_copy(model, tokens, task)

    tokens = task.batch(batch, torch.Generator().manual_seed(seed))
    before = measure_copy(model, tokens, task)
    after = run(heads)
    rows = [AblationRow(f"{mode}-ablate random #{i + 1}", c, run(c)) for i, c in enumerate(controls)]
    return AblationResult(mode, task, batch, seed, list(heads), before, after, rows, scores)


# --------------------------------------------------------------------------------------------------- scaling
@dataclass
class ScalingResult:
    """Copying with ``heads`` scaled by each coefficient (1 = unchanged model)."""

    task: CopyTask
    batch: int
    seed: int
    heads: list[Head]
    rows: list[tuple[float, CopyScores]]
    before: CopyScores

    def table(self) -> Table:
        """One row per coefficient: first-copy loss, copy loss, its change from the unchanged model, accuracy."""
        t = Table(
            title=f"scaling {heads_text(self.heads)} on copying (|x| = {self.task.n}, batch {self.batch}, "
            f"seed {self.seed})",
            title_justify="left",
        )
        for col in ("coefficient", "first-copy loss", "copy loss", "Δ copy loss", "copy acc"):
            t.add_column(col, justify="right")
        for c, s in self.rows:
            t.add_row(
                f"{c:g}",
                cell(s.first_loss),
                cell(s.copy_loss),
                f"{s.copy_loss - self.before.copy_loss:+.3f}",
                cell(s.copy_acc),
            )
        return t


def scaling_experiment(
    model: nn.Module,
    heads: Sequence[Head],
    coefficients: Sequence[float] = (0.0, 0.5, 1.0, 1.5, 2.0),
    *,
    task: CopyTask | None = None,
    batch: int = 8,
    seed: int = 0,
) -> ScalingResult:
    """Multiply the outputs of ``heads`` by each coefficient in turn and measure copying (batch seeded by ``seed``)."""
    heads = check_heads(model, heads)
    if not heads:
        raise ConfigError("heads", "[]", "nothing to scale")
    if not coefficients:
        raise ConfigError("coefficients", "[]", "give at least one coefficient")
    task = task or CopyTask(n=40, low=100, high=20000, bos=1)
    tokens = task.batch(batch, torch.Generator().manual_seed(seed))
    before = measure_copy(model, tokens, task)
    rows = []
    for c in coefficients:
        with scale_heads(model, {h: float(c) for h in heads}):
            rows.append((float(c), measure_copy(model, tokens, task)))
    return ScalingResult(task, batch, seed, list(heads), rows, before)
