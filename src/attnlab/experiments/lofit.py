"""LoFiT: select heads by learned scaling vectors, then learn offset vectors on those heads only, the model frozen;
compared with PEAR and with no change on PEAR's copying proxy and held-out set.

Yin, Ye & Durrett, "LoFiT: Localized Fine-tuning on LLM Representations" (NeurIPS 2024, arXiv:2406.01563); code
``fc2869/lo-fit`` (``lofit_trainer.py``, ``models/modeling_llama.py``, ``utils/trainers.py``, ``train_script_*.sh``).

What the authors' code does, and what is done here:

- **the edit** (``modeling_llama.py``): per head, ``z'_h = (1 + A_h) ⊙ z_h + v_h`` on the attention output before
  ``o_proj``, ``A_h, v_h ∈ R^{d_head}``; here ``lens.head_offsets.HeadOffsets`` on ``hook_z`` (the same tensor).
- **step 1, head selection** (``--lofit_component A``): only the ``A`` of every head are trained (``v`` stays 0),
  initialised from N(0, 1e-3²), with ``λ · Σ|A|`` added to the loss (``utils/trainers.py``); the heads are ranked by
  ‖A_h‖₂ and the top K kept. The scripts use λ = 5e-4 to 5e-3, lr 5e-4 to 5e-3.
- **step 2, bias tuning** (``--lofit_component v``): a fresh model; only the ``v`` of the K heads are trained, from
  N(0, 1e-3²), λ = 0, lr 1e-2 to 2e-2; ``A`` is not used. K = 32 of Llama-2-7B's 1024 heads (3 %), 16 for Gemma-7B.
- **training**: Hugging Face's Trainer (AdamW, weight decay 0, linear decay, no warm-up, gradient clipping at 1),
  batch 8, 5 epochs over 300 examples, fp32 for 7B. Here: the project's one loop, ``train.loop.fit`` (AdamW with
  weight decay 0, betas (0.9, 0.999), clipping at 1, no warm-up, cosine decay to 0 instead of linear), on fresh
  batches of PEAR's proxy task drawn from a generator seeded with ``seed`` (the same sequences PEAR trains on), far
  fewer steps, and larger learning rates to compensate (the CLI's defaults).

The comparison: the unchanged model, PEAR on every head, PEAR on the K heads its path patching selects
(``pear.pear_experiment``, ``select=K``), and LoFiT on K heads, all measured on ``pear.held_out_batch`` (the same
held-out sequences), with the number of trained parameters and the heads each method chose. ``controls`` adds step
2's offsets on PEAR's path-patching heads and on K random heads: the same edit on other heads, which tells the
selection's share of the result from the offsets'.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from rich.table import Table
from torch import Tensor, nn

from attnlab.errors import ConfigError
from attnlab.experiments.pear import PathSelection, held_out_batch, pear_experiment
from attnlab.experiments.tables import cell
from attnlab.lens.copy_task import CopyScores, CopyTask, measure_copy
from attnlab.lens.head_offsets import HeadOffsets
from attnlab.lens.interventions import Head, all_heads, head_label, random_heads
from attnlab.lens.losses import text_loss
from attnlab.tasks.base import IGNORE, Batch
from attnlab.train.config import TrainConfig
from attnlab.train.loop import fit

StepHook = Callable[[str, int, float], None]  # (stage, step from 1, training loss)


# --------------------------------------------------------------------------------------------------- training
def copy_batch(tokens: Tensor, task: CopyTask) -> Batch:
    """Copying sequences [B, length] as a next-token batch for ``fit``: ``targets[:, t]`` is the token at ``t + 1``
    where that token is scored (``task.targets()``), IGNORE elsewhere, so ``fit``'s loss is ``copy_loss``."""
    targets = torch.full_like(tokens, IGNORE)
    scored = task.targets()
    targets[:, scored.start - 1 : scored.stop - 1] = tokens[:, scored]
    return Batch(inputs=tokens, targets=targets)


class EditedLM(nn.Module):
    """A frozen model run with ``edits`` hooked on, for ``fit``: its only trainable parameters are the edits', and
    ``aux_loss`` is ``l1 · edits.l1()``. The wrapped model stays in eval mode (no dropout) whatever ``train`` asks."""

    def __init__(self, model: nn.Module, edits: HeadOffsets, l1: float = 0.0):
        super().__init__()
        self.lm, self.edits, self.l1 = model, edits, l1

    def forward(self, inputs: Tensor) -> Tensor:
        with self.edits.applied(self.lm):
            return self.lm(inputs)

    def aux_loss(self) -> Tensor | None:
        return self.l1 * self.edits.l1() if self.l1 else None

    def train(self, mode: bool = True) -> EditedLM:
        self.training = mode
        self.edits.train(mode)
        self.lm.eval()
        return self


@contextmanager
def frozen(model: nn.Module) -> Iterator[None]:
    """Every parameter of ``model`` without gradient inside the block; flags and train / eval mode restored after."""
    flags = {p: p.requires_grad for p in model.parameters()}
    was_training = model.training
    try:
        for p in model.parameters():
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in flags.items():
            p.requires_grad_(flag)
        model.train(was_training)


def _check(steps: int, lr: float, l1: float) -> None:
    if steps < 1:
        raise ConfigError("steps", steps, "must be at least 1")
    if lr <= 0 or not math.isfinite(lr):
        raise ConfigError("lr", lr, "must be a positive number")
    if l1 < 0 or not math.isfinite(l1):
        raise ConfigError("l1", l1, "must be >= 0")


def train_head_vectors(
    model: nn.Module,
    edits: HeadOffsets,
    task: CopyTask,
    *,
    steps: int,
    batch: int,
    lr: float,
    l1: float = 0.0,
    seed: int = 0,
    on_step: Callable[[int, float], None] | None = None,
) -> list[float]:
    """Train ``edits`` on ``task`` through ``train.loop.fit`` with every parameter of ``model`` frozen.

    Loss: ``copy_loss + l1 · edits.l1()``; batches: ``task.batch(batch, g)`` with ``g`` seeded by ``seed`` (PEAR's
    draw). Returns the copy loss of every step (without the penalty); ``on_step(step, loss)`` after each update.
    """
    _check(steps, lr, l1)
    device = next(model.parameters()).device
    edits.to(device)
    cfg = TrainConfig(
        steps=steps,
        batch_size=batch,
        lr=lr,
        weight_decay=0.0,
        betas=(0.9, 0.999),
        warmup_frac=0.0,
        min_lr_frac=0.0,
        grad_clip=1.0,
        eval_every=steps,
        device=str(device),
    )
    g = torch.Generator().manual_seed(seed)
    validation = copy_batch(task.batch(4, torch.Generator().manual_seed(seed + 3_000_003)), task)
    losses: list[float] = []

    def step_done(step: int, loss: float) -> None:
        losses.append(loss)
        if on_step is not None:
            on_step(step, loss)

    with frozen(model):
        model.eval()
        fit(EditedLM(model, edits, l1), lambda _, size: copy_batch(task.batch(size, g), task), validation, cfg,
            on_step=step_done)  # fmt: skip
    return losses


@dataclass
class LofitSelection:
    """Step 1: ‖A_h‖₂ of every head after training the scaling vectors, and the K heads kept (largest first)."""

    norms: dict[Head, float]
    heads: list[Head]
    losses: list[float]
    n_trained: int


def lofit_selection(
    model: nn.Module,
    task: CopyTask,
    k: int,
    *,
    steps: int = 40,
    batch: int = 4,
    lr: float = 1e-2,
    l1: float = 1e-3,
    init_std: float = 1e-3,
    seed: int = 0,
    on_step: Callable[[int, float], None] | None = None,
) -> LofitSelection:
    """LoFiT's step 1 on every head of ``model``: learn ``A`` with the L1 penalty, keep the ``k`` largest ‖A_h‖₂."""
    heads = all_heads(model)
    if not 1 <= k <= len(heads):
        raise ConfigError("k", k, f"must be between 1 and the model's {len(heads)} heads")
    g = torch.Generator().manual_seed(seed + 4_000_003)
    edits = HeadOffsets.for_model(model, heads, scale=True, offset=False, init_std=init_std, generator=g)
    losses = train_head_vectors(model, edits, task, steps=steps, batch=batch, lr=lr, l1=l1, seed=seed, on_step=on_step)
    return LofitSelection(edits.scale_norms(), edits.top_heads(k), losses, edits.n_trained())


def lofit_offsets(
    model: nn.Module,
    heads: Sequence[Head],
    task: CopyTask,
    *,
    steps: int = 40,
    batch: int = 4,
    lr: float = 1e-2,
    init_std: float = 1e-3,
    seed: int = 0,
    on_step: Callable[[int, float], None] | None = None,
) -> tuple[HeadOffsets, list[float]]:
    """LoFiT's step 2: learn an offset ``v_h`` on each of ``heads`` only (no scaling, no penalty)."""
    g = torch.Generator().manual_seed(seed + 5_000_003)
    edits = HeadOffsets.for_model(model, heads, scale=False, offset=True, init_std=init_std, generator=g)
    losses = train_head_vectors(model, edits, task, steps=steps, batch=batch, lr=lr, seed=seed, on_step=on_step)
    return edits, losses


# --------------------------------------------------------------------------------------------------- the experiment
@dataclass(frozen=True)
class Row:
    """One method measured on the held-out set."""

    method: str
    trained: int  # numbers learned by the deployed edit
    heads: int  # heads it changes
    scores: CopyScores
    text: float | None


@dataclass
class LofitResult:
    """No change, PEAR (all heads; K heads by path patching) and LoFiT (K heads) on one held-out copying set."""

    task: CopyTask
    k: int
    seed: int
    eval_batch: int
    steps: tuple[int, int, int]  # LoFiT step 1, LoFiT step 2, PEAR
    batch: int
    rows: list[Row]
    selection: LofitSelection
    pear_selection: PathSelection
    pear_coefficients: dict[Head, float]  # PEAR on every head
    offset_norms: dict[Head, float]  # ‖v_h‖₂ of LoFiT's learned offsets
    offset_losses: list[float]
    seconds: float = 0.0

    def table(self) -> Table:
        """Held-out copying (loss, accuracy) and the real-text loss of each method, with its trained parameters."""
        s1, s2, sp = self.steps
        t = Table(
            title=f"No change vs PEAR vs LoFiT, held-out copying (|x| = {self.task.n}, {self.eval_batch} sequences, "
            f"seed {self.seed})",
            caption=f"steps × batch {self.batch}: PEAR {sp}, LoFiT {s1} (selection, {self.selection.n_trained} "
            f"scaling numbers, not deployed) + {s2} (offsets); text loss: real text (pydoc_data)",
            title_justify="left",
            caption_justify="left",
        )
        for col in ("method", "trained", "heads", "copy loss", "copy acc", "text loss"):
            t.add_column(col, justify="right")
        for r in self.rows:
            text = cell(r.text) if r.text is not None else "-"
            t.add_row(r.method, str(r.trained), str(r.heads), cell(r.scores.copy_loss), cell(r.scores.copy_acc), text)
        return t

    def pear_most_changed(self) -> list[Head]:
        """The K heads whose PEAR coefficient (on every head) moved farthest from 1, farthest first."""
        return sorted(self.pear_coefficients, key=lambda h: -abs(self.pear_coefficients[h] - 1.0))[: self.k]

    def heads_table(self) -> Table:
        """The K heads of each method side by side, with the score each ranked them by."""
        pear_all = [(h, self.pear_coefficients[h]) for h in self.pear_most_changed()]
        change = self.pear_selection.change
        norms = sorted(self.selection.norms.values(), reverse=True)
        t = Table(
            title=f"The {self.k} heads each method picks",
            caption=f"‖A‖₂ over the {len(norms)} heads: largest {norms[0]:.3f}, K-th {norms[self.k - 1]:.3f}, "
            + (f"(K+1)-th {norms[self.k]:.3f}, " if self.k < len(norms) else "")
            + f"median {norms[len(norms) // 2]:.3f}, smallest {norms[-1]:.3f}",
            title_justify="left",
            caption_justify="left",
        )
        for col in ("rank", "LoFiT (‖A‖₂)", "PEAR path patching (Δ logit)", "PEAR all heads (α, largest |α − 1|)"):
            t.add_column(col, justify="right")
        pp = self.pear_selection.heads
        for i in range(self.k):
            lofit = self.selection.heads[i]
            a = f"{head_label(lofit)} {self.selection.norms[lofit]:.3f}"
            b = f"{head_label(pp[i])} {float(change[pp[i]]):+.3f}" if i < len(pp) else "-"
            c = f"{head_label(pear_all[i][0])} {pear_all[i][1]:.3f}" if i < len(pear_all) else "-"
            t.add_row(str(i + 1), a, b, c)
        return t

    def overlaps(self) -> dict[str, list[Head]]:
        """LoFiT's heads shared with PEAR's path-patching heads and with PEAR's K most-changed coefficients."""
        lofit, pear_all = self.selection.heads, self.pear_most_changed()
        return {
            "path patching": [h for h in lofit if h in self.pear_selection.heads],
            "PEAR all heads": [h for h in lofit if h in pear_all],
        }


def lofit_experiment(
    model: nn.Module,
    *,
    task: CopyTask | None = None,
    k: int = 10,
    select_steps: int = 40,
    select_lr: float = 1e-2,
    l1: float = 1e-3,
    steps: int = 40,
    lr: float = 1e-2,
    batch: int = 4,
    init_std: float = 1e-3,
    pear_steps: int = 40,
    pear_lr: float = 3e-2,
    eval_batch: int = 32,
    seed: int = 0,
    text_tokens: Tensor | None = None,
    on_step: StepHook | None = None,
    controls: bool = False,
) -> LofitResult:
    """Run PEAR (every head; the ``k`` heads of its path patching) and LoFiT (``k`` heads) on ``task`` with the
    training seed ``seed`` and measure each on ``pear.held_out_batch(task, eval_batch, seed)`` (and on
    ``text_tokens`` [B, T], real text, as a side-effect check). All train on the same sequences (the generator
    seeded with ``seed``); the model's parameters are never changed. ``controls``: also learn step 2's offsets on
    PEAR's path-patching heads and on ``k`` random heads (seeded), to separate the selection from the offsets.
    """
    task = task or CopyTask(n=25, low=100, high=20000, bos=1)
    if not 1 <= k <= len(all_heads(model)):
        raise ConfigError("k", k, f"must be between 1 and the model's {len(all_heads(model))} heads")
    start = time.perf_counter()

    def hook(stage: str, first: int) -> Callable[[int, float], None] | None:
        """``on_step`` for one stage, its steps counted from 1 (PEAR's ``on_step`` counts from 0, ``fit``'s from 1)."""
        return None if on_step is None else lambda step, loss: on_step(stage, step + 1 - first, loss)

    common = {"task": task, "batch": batch, "eval_batch": eval_batch, "seed": seed, "text_tokens": text_tokens}
    pear_all = pear_experiment(model, steps=pear_steps, lr=pear_lr, on_step=hook("PEAR, all heads", 0), **common)
    pear_k = pear_experiment(
        model, steps=pear_steps, lr=pear_lr, select=k, on_step=hook(f"PEAR, {k} heads", 0), **common
    )
    if pear_k.selection is None:  # pear_experiment(select=k) always records its selection
        raise RuntimeError("PEAR's path-patching selection is missing")
    selection = lofit_selection(
        model, task, k, steps=select_steps, batch=batch, lr=select_lr, l1=l1, init_std=init_std, seed=seed,
        on_step=hook("LoFiT selection", 1),
    )  # fmt: skip
    device = next(model.parameters()).device
    held_out = held_out_batch(task, eval_batch, seed).to(device)
    text_tokens = text_tokens.to(device) if text_tokens is not None else None

    def offsets_on(heads: list[Head], stage: str) -> tuple[HeadOffsets, list[float], CopyScores, float | None]:
        """Step 2 on ``heads``, then the held-out copying and text loss with the learned offsets."""
        edits, losses = lofit_offsets(
            model, heads, task, steps=steps, batch=batch, lr=lr, init_std=init_std, seed=seed,
            on_step=hook(stage, 1),
        )  # fmt: skip
        with edits.deployed(model):
            scores = measure_copy(model, held_out, task)
            text = text_loss(model, text_tokens) if text_tokens is not None else None
        return edits, losses, scores, text

    edits, losses, lofit_scores, lofit_text = offsets_on(selection.heads, "LoFiT offsets")
    n_heads = len(all_heads(model))
    rows = [
        Row("no change", 0, 0, pear_all.before, pear_all.text_before),
        Row("PEAR, all heads", n_heads, n_heads, pear_all.after, pear_all.text_after),
        Row(f"PEAR, {k} heads (path patching)", k, k, pear_k.after, pear_k.text_after),
        Row(f"LoFiT, {k} heads (‖A‖₂)", edits.n_trained(), k, lofit_scores, lofit_text),
    ]
    if controls:
        drawn = random_heads(model, k, seed + 6_000_003)
        for label, heads in (("PEAR's path-patching heads", pear_k.selection.heads), ("random heads", drawn)):
            control, _, scores, text = offsets_on(heads, f"LoFiT offsets, {label}")
            rows.append(Row(f"offsets on {k} {label}", control.n_trained(), k, scores, text))
    offsets = edits.offset.detach().norm(dim=-1).tolist() if edits.offset is not None else []
    return LofitResult(
        task=task,
        k=k,
        seed=seed,
        eval_batch=eval_batch,
        steps=(select_steps, steps, pear_steps),
        batch=batch,
        rows=rows,
        selection=selection,
        pear_selection=pear_k.selection,
        pear_coefficients=pear_all.coefficients,
        offset_norms=dict(zip(edits.heads, offsets, strict=True)),
        offset_losses=losses,
        seconds=time.perf_counter() - start,
    )
