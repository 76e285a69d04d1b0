"""The experiments behind ``attnlab intervene``: each measures a task before and after a head intervention and
returns a dataclass with the numbers and a ``rich`` table.

- ``ablation_experiment``: zero- or mean-ablate heads (by default the top induction heads) and measure the copying
  task; the same number of random heads, ablated the same way, is the control.
- ``scaling_experiment``: multiply heads' outputs by a list of coefficients (1 is the identity).
- ``pear_experiment``: learn PEAR coefficients on the copying proxy (``lens.pear``) and measure a held-out copying
  set, and the loss on real text, before and after.
- ``act_experiment``: ACT (``lens.act``) on real text: search heads on calibration chunks, measure held-out chunks.

The copying task is ``pear.CopyTask``: ``[BOS] + x + x``; the copy is scored on the second ``x`` after its first
token (which cannot be inferred by copying), the *first-copy* loss on the first ``x`` after its first token (the
model has not seen these tokens, so this is the no-copying baseline). Real text is CPython's own documentation
(``pydoc_data.topics``, part of the standard library, so always available offline).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from rich.markup import escape
from rich.table import Table
from torch import Tensor, nn

from attnlab.errors import ConfigError
from attnlab.lens import act as act_lib
from attnlab.lens.capture import patterns, run_with_cache
from attnlab.lens.interventions import (
    Head,
    all_heads,
    check_heads,
    edit_heads,
    head_label,
    head_means,
    random_heads,
    scale_heads,
)
from attnlab.lens.metrics import induction_score
from attnlab.lens.pear import CopyTask, train_pear

MODES = ("zero", "mean")


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    return escape(str(value))


def _heads_text(heads: Sequence[Head], limit: int = 8) -> str:
    labels = [head_label(h) for h in heads]
    more = f" +{len(labels) - limit}" if len(labels) > limit else ""
    return ",".join(labels[:limit]) + more


# --------------------------------------------------------------------------------------------------- measuring
@dataclass(frozen=True)
class CopyScores:
    """The copying task measured once: losses in nats/token, accuracy as a share of targets."""

    first_loss: float  # first copy (after its first token): nothing to copy yet
    copy_loss: float  # second copy (after its first token)
    copy_acc: float  # greedy next-token accuracy on the second copy


@torch.no_grad()
def measure_copy(model: nn.Module, tokens: Tensor, task: CopyTask, chunk: int = 16) -> CopyScores:
    """``CopyScores`` of ``model`` on ``tokens`` [B, task.length] (see the module docstring for the positions)."""
    if tokens.dim() != 2 or tokens.shape[1] != task.length:
        raise ValueError(f"tokens must be [B, {task.length}] for this task; got {tuple(tokens.shape)}")
    o, n = task.offset, task.n
    first, second = slice(o + 1, o + n), task.targets()
    sums = {"first": 0.0, "copy": 0.0, "correct": 0}
    for part in tokens.split(chunk):
        logits = model(part).float()
        for key, span in (("first", first), ("copy", second)):
            pred = logits[:, span.start - 1 : span.stop - 1]
            target = part[:, span]
            sums[key] += float(F.cross_entropy(pred.transpose(1, 2), target, reduction="sum"))
            if key == "copy":
                sums["correct"] += int((pred.argmax(-1) == target).sum())
    count = tokens.shape[0] * (n - 1)
    return CopyScores(sums["first"] / count, sums["copy"] / count, sums["correct"] / count)


@torch.no_grad()
def text_loss(model: nn.Module, tokens: Tensor, chunk: int = 8) -> float:
    """Mean next-token cross-entropy (nats/token) over every position of ``tokens`` [B, T]."""
    total, count = 0.0, 0
    for part in tokens.split(chunk):
        logits = model(part).float()
        total += float(F.cross_entropy(logits[:, :-1].transpose(1, 2), part[:, 1:], reduction="sum"))
        count += part[:, 1:].numel()
    return total / count


def stdlib_text() -> str:
    """CPython's documentation topics (``pydoc_data.topics``), concatenated in sorted key order: real English text."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[key] for key in sorted(topics))


def text_chunks(tokenizer: Any, seq_len: int, n_chunks: int, *, from_end: bool = False, bos: int | None = 1) -> Tensor:
    """``n_chunks`` consecutive, non-overlapping chunks of ``stdlib_text()`` as ids [n_chunks, seq_len].

    Each chunk is ``[bos] +`` ``seq_len − 1`` text tokens (``seq_len`` text tokens without ``bos``). Chunks come from
    the start of the text, or with ``from_end`` from its end, so a calibration set and a held-out set taken from
    the two ends do not overlap.
    """
    width = seq_len - (0 if bos is None else 1)
    if width < 2 or n_chunks < 1:
        raise ConfigError("seq_len / chunks", f"{seq_len} / {n_chunks}", "need seq_len >= 3 and chunks >= 1")
    ids = tokenizer.encode(stdlib_text()).ids
    if n_chunks * width > len(ids):
        raise ConfigError("chunks", n_chunks, f"the text has only {len(ids) // width} chunks of {width} tokens")
    start = len(ids) - n_chunks * width if from_end else 0
    body = torch.tensor(ids[start : start + n_chunks * width]).view(n_chunks, width)
    if bos is None:
        return body
    return torch.cat([torch.full((n_chunks, 1), bos), body], dim=1)


@torch.no_grad()
def top_induction_heads(
    model: nn.Module, task: CopyTask, k: int, seed: int, batch: int = 4
) -> list[tuple[Head, float]]:
    """The ``k`` heads with the highest induction score (``metrics.induction_score``) on a seeded task batch."""
    if task.bos is None:
        raise ConfigError("bos", None, "induction-head detection needs the [BOS] + x + x layout")
    tokens = task.batch(batch, torch.Generator().manual_seed(seed))
    _, cache = run_with_cache(model, tokens, lambda name: name.endswith(".attn.hook_pattern"))
    scored = [
        ((layer, h), float(s)) for layer, P in patterns(cache).items() for h, s in enumerate(induction_score(P, task.n))
    ]
    return sorted(scored, key=lambda x: -x[1])[:k]


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
                _cell(r.label),
                _cell(_heads_text(r.heads) or "-"),
                _cell(s.first_loss),
                _cell(s.copy_loss),
                f"{s.copy_loss - self.before.copy_loss:+.3f}",
                _cell(s.copy_acc),
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
            title=f"scaling {_heads_text(self.heads)} on copying (|x| = {self.task.n}, batch {self.batch}, "
            f"seed {self.seed})",
            title_justify="left",
        )
        for col in ("coefficient", "first-copy loss", "copy loss", "Δ copy loss", "copy acc"):
            t.add_column(col, justify="right")
        for c, s in self.rows:
            t.add_row(
                f"{c:g}",
                _cell(s.first_loss),
                _cell(s.copy_loss),
                f"{s.copy_loss - self.before.copy_loss:+.3f}",
                _cell(s.copy_acc),
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


# --------------------------------------------------------------------------------------------------- PEAR
@dataclass
class PearResult:
    """PEAR on the copying proxy: held-out copying (and real-text loss) before and after the coefficients."""

    task: CopyTask
    n_heads: int
    steps: int
    batch: int
    lr: float
    seed: int
    eval_batch: int
    before: CopyScores
    after: CopyScores
    coefficients: dict[Head, float]
    train_losses: list[float]
    text_before: float | None = None
    text_after: float | None = None
    seconds: float = 0.0

    def suppression(self) -> list[tuple[Head, float]]:
        """Heads whose coefficient ended below 1, smallest first."""
        return sorted(((h, a) for h, a in self.coefficients.items() if a < 1.0), key=lambda x: x[1])

    def table(self) -> Table:
        """Held-out copying (loss, accuracy, first-copy loss) and the text loss, before and after."""
        t = Table(
            title=f"PEAR, held-out copying (|x| = {self.task.n}, {self.eval_batch} sequences)",
            caption=f"{self.n_heads} coefficients, {self.steps} steps × batch {self.batch}, lr {self.lr:g}, seed "
            f"{self.seed}; text loss: real text (pydoc_data)",
            title_justify="left",
            caption_justify="left",
        )
        for col in ("", "copy loss", "copy acc", "first-copy loss", "text loss"):
            t.add_column(col, justify="right")
        for label, s, text in (("before", self.before, self.text_before), ("after", self.after, self.text_after)):
            t.add_row(label, _cell(s.copy_loss), _cell(s.copy_acc), _cell(s.first_loss), _cell(text) if text else "-")
        return t

    def coefficient_table(self, top: int = 10) -> Table:
        """The ``top`` smallest coefficients (suppression heads) and the ``top`` largest."""
        ranked = sorted(self.coefficients.items(), key=lambda x: x[1])
        n_below = len(self.suppression())
        t = Table(
            title=f"PEAR coefficients: {n_below} of {len(ranked)} below 1",
            title_justify="left",
        )
        for col in ("head", "α (smallest)", "head ", "α (largest)"):
            t.add_column(col, justify="right")
        low, high = ranked[:top], ranked[::-1][:top]
        for (h1, a1), (h2, a2) in zip(low, high, strict=False):
            t.add_row(head_label(h1), f"{a1:.3f}", head_label(h2), f"{a2:.3f}")
        return t


def pear_experiment(
    model: nn.Module,
    heads: Sequence[Head] | None = None,
    *,
    layers: Sequence[int] | None = None,
    task: CopyTask | None = None,
    steps: int = 40,
    batch: int = 4,
    lr: float = 3e-2,
    sum_penalty: float = 0.0,
    eval_batch: int = 32,
    seed: int = 0,
    text_tokens: Tensor | None = None,
    on_step: Callable[[int, float], None] | None = None,
) -> PearResult:
    """Train PEAR coefficients (``pear.train_pear``) and measure a held-out copying set before and after.

    ``heads`` (default: every head of ``layers``, default all layers). Training batches are drawn from a generator
    seeded with ``seed``, the held-out set from ``seed + 1_000_003``: different random sequences. The "after"
    numbers use the learned coefficients as fixed floats through ``scale_heads`` (the deployed form). With
    ``text_tokens`` [B, T] the mean next-token loss on them is measured too (a side-effect check).
    """
    task = task or CopyTask(n=25, low=100, high=20000, bos=1)
    heads = check_heads(model, heads) if heads is not None else all_heads(model, layers)
    if eval_batch < 1:
        raise ConfigError("eval_batch", eval_batch, "must be at least 1")
    held_out = task.batch(eval_batch, torch.Generator().manual_seed(seed + 1_000_003))
    start = time.perf_counter()
    before = measure_copy(model, held_out, task)
    text_before = text_loss(model, text_tokens) if text_tokens is not None else None
    trained = train_pear(
        model, heads, task, steps=steps, batch=batch, lr=lr, sum_penalty=sum_penalty, seed=seed, on_step=on_step
    )
    with scale_heads(model, trained.coefficients):
        after = measure_copy(model, held_out, task)
        text_after = text_loss(model, text_tokens) if text_tokens is not None else None
    return PearResult(
        task=task,
        n_heads=len(heads),
        steps=steps,
        batch=batch,
        lr=lr,
        seed=seed,
        eval_batch=eval_batch,
        before=before,
        after=after,
        coefficients=trained.coefficients,
        train_losses=trained.losses,
        text_before=text_before,
        text_after=text_after,
        seconds=time.perf_counter() - start,
    )


# --------------------------------------------------------------------------------------------------- ACT
@dataclass
class ActResult:
    """ACT on real text: loss on calibration and held-out chunks, without calibration and with two head sets."""

    beta: float
    threshold: float
    exclude_last: int
    calib_shape: tuple[int, int]
    heldout_shape: tuple[int, int]
    candidates: list[Head]
    selected: list[tuple[Head, float]]
    rows: list[tuple[str, list[Head], float, float, int]]  # label, heads, calibration loss, held-out loss, sinks

    def table(self) -> Table:
        """One row per head set: calibration and held-out loss, held-out perplexity and its change, sinks moved."""
        (nc, tc), (nh, th) = self.calib_shape, self.heldout_shape
        t = Table(
            title=f"ACT on real text (pydoc_data): calibration {nc}×{tc} tokens, held-out {nh}×{th}",
            caption=f"β = {self.beta:g}, τ = {self.threshold:g}, last {self.exclude_last} keys never sinks; "
            "losses in nats/token",
            title_justify="left",
            caption_justify="left",
        )
        for col in ("heads calibrated", "count", "calib loss", "held-out loss", "held-out ppl", "Δ held-out", "sinks"):
            t.add_column(col, justify="left" if col == "heads calibrated" else "right")
        base = self.rows[0][3]
        for label, heads, calib, held, sinks in self.rows:
            t.add_row(
                _cell(label),
                str(len(heads)),
                f"{calib:.4f}",
                f"{held:.4f}",
                f"{math.exp(held):.3f}",
                f"{held - base:+.4f}",
                str(sinks),
            )
        return t


def act_experiment(
    model: nn.Module,
    calib_tokens: Tensor,
    heldout_tokens: Tensor,
    *,
    beta: float = act_lib.BETA,
    threshold: float = act_lib.THRESHOLD,
    min_layer: int = 2,
    exclude_last: int = 0,
    max_candidates: int | None = None,
    search: bool = True,
    on_head: Callable[[Head, float], None] | None = None,
) -> ActResult:
    """ACT's protocol on next-token loss: candidate heads = heads of layers ≥ ``min_layer`` with a hidden sink on
    the calibration chunks; each is calibrated alone and kept if it lowers the calibration loss
    (``act.search_heads``); then held-out loss without calibration, with every candidate, and with the kept heads.

    ``max_candidates`` keeps only the first candidates (layer order) to bound the time (None: all).
    ``exclude_last`` keys at the end are never sinks (their column score averages over very few queries; the
    authors use 0).
    """
    act_lib._check_params(beta, threshold)
    if exclude_last < 0:
        raise ConfigError("exclude_last", exclude_last, "must be >= 0")
    candidates = act_lib.sink_heads(model, calib_tokens, threshold, min_layer, exclude_last)
    if max_candidates is not None:
        candidates = candidates[: max(0, max_candidates)]

    def calib_loss() -> float:
        return text_loss(model, calib_tokens)

    def measured(heads: Sequence[Head]) -> tuple[float, float, int]:
        if not heads:
            return calib_loss(), text_loss(model, heldout_tokens), 0
        with act_lib.act_calibration(model, heads, beta, threshold, exclude_last) as stats:
            c = calib_loss()
            h = text_loss(model, heldout_tokens)
        return c, h, stats.total_sinks()

    rows = [("none", [], *measured([]))]
    selected: list[tuple[Head, float]] = []
    if candidates:
        rows.append(("every head with a hidden sink", list(candidates), *measured(candidates)))
    if search and candidates:
        _, selected = act_lib.search_heads(
            model, candidates, calib_loss, beta, threshold, exclude_last, on_head=on_head
        )
        chosen = [h for h, _ in selected]
        rows.append(("heads kept by the search", chosen, *measured(chosen)))
    return ActResult(
        beta,
        threshold,
        exclude_last,
        tuple(calib_tokens.shape),
        tuple(heldout_tokens.shape),
        list(candidates),
        selected,
        rows,
    )
