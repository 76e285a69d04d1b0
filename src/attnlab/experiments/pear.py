"""PEAR: learn one output coefficient per attention head on a copying proxy task, the model frozen.

Tan, Qian, Lv, Lin, Wu, Wang, Wang, Wu, Lu, Yan, "PEAR: Position-Embedding-Agnostic Attention Re-weighting Enhances
Retrieval-Augmented Generation with Zero Inference Overhead" (WWW 2025, arXiv:2409.19745); code ``TTArch/PEAR-RAG``
(``train/data/gener.py``, ``train/train.py``, ``train/train.sh``, ``train/pear_longma4train/ablation_40_LongMa.py``).

What the authors' code does, and what is done here:

- **proxy task** (``gener.py``): ``x = r_1..r_n r_1..r_n`` with ``r_i`` uniform over the vocabulary minus ids 0, 1,
  ``n = 50``, the loss on the second half only (labels −100 on the first). Here: the same layout, optionally after a
  BOS token (attnlab's ``[BOS] + x + x``, ``lens.copy_task.CopyTask``), ids drawn from a range of ordinary
  tokens, and the loss on the second copy *minus its first token* (``r_1`` after ``r_n`` cannot be inferred by
  copying; the authors include it). ``n`` is a parameter (the CPU experiment uses a shorter one).
- **re-weighting** (``ablation_40_LongMa.py``): per selected head a scalar ``α_h`` (init 1) multiplies the head's
  output before the output projection, ``o_h ← o_h + (α_h − 1)·o_h``; here ``hook_z`` scaled by
  ``interventions.scale_heads`` (identical for a bias-free ``o_proj``, which Llama and SmolLM2 have).
- **training** (``train.py`` / ``train.sh``): only the α are trainable, the LLM frozen; AdamW (Hugging Face Trainer
  default, weight decay 0), lr 5e-3, linear schedule with 2 warm-up steps, batch 1 × gradient accumulation 20, one
  epoch over 50 000 samples, bf16. Here: ``torch.optim.Adam`` (Kingma & Ba 2015, arXiv:1412.6980; AdamW without
  weight decay is the same update), the same schedule shape, float32, and far fewer steps (a parameter) with a
  larger lr to compensate.
- **regularisation**: the released ``train.py`` adds none; a penalty ``(Σ_h α_{l,h} − H)²`` per re-weighted layer is
  present but commented out. It is offered as ``sum_penalty`` (weight, default 0 = the released code) over the
  selected heads of each layer. What the paper text (arXiv:2409.19745) says about it is unverified: it was not
  read here.
- **head selection** (``Factual-Recall-Mechanism-main-find-heads/path_llama.py`` and ``easy_transformer/
  fact_utils.py``: ``plot_path_patching``): the authors first find "RAG-suppression heads" by path patching on the
  proxy task and re-weight only those (5–40 heads of Llama-2-7B). Each head alone is the sender, the receiver is
  the last layer's residual stream (the logits), and the new input is the same batch with the sender's output
  replaced by its batch mean ("D_new == D_orig, because we use the batch mean to melt the influence of the head");
  the score is the change of the copied token's logit. ``path_patching_selection`` does the same with
  ``attnlab.lens.path_patching`` (every position of the batch patched, the logit averaged over the scored
  positions of the second copy; the authors patch and read the last position only) and keeps the ``k`` heads whose
  removal raises the logit most: the heads that suppress copying. ``pear_experiment(select=k)`` re-weights only
  those; without it the caller picks the heads (all heads of some layers by default), and the heads whose learned α
  ends below 1 are reported as suppression heads — the paper reports the learned coefficients end below 1.

The coefficients can be folded into the output projection's columns for deployment (zero inference overhead);
``PearCoefficients.values()`` gives them as plain floats for ``scale_heads``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from rich.table import Table
from torch import Tensor, nn

from attnlab.errors import ConfigError
from attnlab.experiments.tables import cell
from attnlab.lens.capture import run_with_cache
from attnlab.lens.copy_task import CopyScores, CopyTask, copy_loss, measure_copy
from attnlab.lens.interventions import Head, all_heads, check_heads, head_label, scale_heads
from attnlab.lens.losses import text_loss
from attnlab.lens.patching import Metric
from attnlab.lens.path_patching import path_patch_heads, path_patching_names
from attnlab.lens.residual import z_name


# --------------------------------------------------------------------------------------------------- coefficients
class PearCoefficients(nn.Module):
    """One learnable scalar α per listed head (init 1) multiplying that head's ``hook_z`` output."""

    def __init__(self, heads: Sequence[Head]):
        super().__init__()
        if not heads:
            raise ConfigError("heads", "[]", "PEAR needs at least one head to re-weight")
        self.heads: list[Head] = [(int(layer), int(h)) for layer, h in heads]
        if len(set(self.heads)) != len(self.heads):
            raise ConfigError("heads", ",".join(map(head_label, self.heads)), "a head is listed twice")
        self.alpha = nn.Parameter(torch.ones(len(self.heads)))

    def scales(self) -> dict[Head, Tensor]:
        """{head: α_h as a 0-d tensor that carries the gradient}."""
        return {head: self.alpha[i] for i, head in enumerate(self.heads)}

    def values(self) -> dict[Head, float]:
        """{head: α_h} as plain floats, for ``interventions.scale_heads`` (the deployed, gradient-free form)."""
        return {head: float(a) for head, a in zip(self.heads, self.alpha.detach(), strict=True)}

    def sum_penalty(self) -> Tensor:
        """``Σ_layers (Σ_{h selected in layer} α_h − n_selected)²``: the authors' commented-out penalty."""
        layers = torch.tensor([layer for layer, _ in self.heads])
        total = self.alpha.new_zeros(())
        for layer in layers.unique():
            sel = self.alpha[layers == layer]
            total = total + (sel.sum() - sel.numel()) ** 2
        return total

    @contextmanager
    def applied(self, model: nn.Module) -> Iterator[None]:
        """Run ``model`` with the (differentiable) coefficients hooked onto its heads."""
        check_heads(model, self.heads)
        with scale_heads(model, self.scales()):
            yield


@dataclass
class PearTraining:
    """What ``train_pear`` returns: the learned coefficients and the training-loss curve."""

    coefficients: dict[Head, float]
    losses: list[float] = field(default_factory=list)  # proxy loss (without the penalty) per step
    steps: int = 0
    lr: float = 0.0

    def suppression_heads(self) -> list[tuple[Head, float]]:
        """Heads whose coefficient ended below 1, smallest first: the heads PEAR turns down."""
        return suppression_heads(self.coefficients)


def suppression_heads(coefficients: dict[Head, float]) -> list[tuple[Head, float]]:
    """The heads whose coefficient is below 1, smallest first (PEAR's "suppression heads")."""
    return sorted(((h, a) for h, a in coefficients.items() if a < 1.0), key=lambda x: x[1])


def linear_schedule(step: int, steps: int, warmup: int) -> float:
    """The lr multiplier of step ``step`` (0-based): linear warm-up over ``warmup`` steps, then linear decay to 0.

    Hugging Face's ``linear`` schedule (as in the authors' ``train.sh``), shifted by one step so the first update
    is not wasted at lr 0.
    """
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, (steps - step) / max(1, steps - warmup))


def train_pear(
    model: nn.Module,
    heads: Sequence[Head],
    task: CopyTask,
    *,
    steps: int = 100,
    batch: int = 8,
    lr: float = 2e-2,
    warmup: int = 2,
    sum_penalty: float = 0.0,
    seed: int = 0,
    on_step: Callable[[int, float], None] | None = None,
) -> PearTraining:
    """Learn PEAR coefficients for ``heads`` on ``task`` with every model parameter frozen.

    Minimises ``copy_loss + sum_penalty · PearCoefficients.sum_penalty()`` over fresh batches drawn from a
    generator seeded with ``seed`` (hold-out data must come from another seed). The model's parameters keep their
    values and, afterwards, their ``requires_grad`` flags. ``on_step(step, loss)`` is called after each update.
    """
    if steps < 1:
        raise ConfigError("steps", steps, "must be at least 1")
    if lr <= 0 or not math.isfinite(lr):
        raise ConfigError("lr", lr, "must be a positive number")
    if sum_penalty < 0:
        raise ConfigError("sum_penalty", sum_penalty, "must be >= 0")
    if warmup < 0:
        raise ConfigError("warmup", warmup, "must be >= 0")
    heads = check_heads(model, heads)
    coefs = PearCoefficients(heads)
    device = next(model.parameters()).device
    coefs.to(device)
    flags = {p: p.requires_grad for p in model.parameters()}
    was_training = model.training
    adam = torch.optim.Adam([coefs.alpha], lr=lr, betas=(0.9, 0.999), eps=1e-8)
    g = torch.Generator().manual_seed(seed)
    losses = []
    try:
        for p in model.parameters():
            p.requires_grad_(False)
        model.eval()
        for step in range(steps):
            tokens = task.batch(batch, g).to(device)
            with coefs.applied(model):
                loss = copy_loss(model(tokens), tokens, task)
            total = loss + sum_penalty * coefs.sum_penalty() if sum_penalty else loss
            adam.zero_grad(set_to_none=True)
            total.backward()
            adam.param_groups[0]["lr"] = lr * linear_schedule(step, steps, warmup)
            adam.step()
            losses.append(float(loss.detach()))
            if on_step is not None:
                on_step(step, losses[-1])
    finally:
        for p, flag in flags.items():
            p.requires_grad_(flag)
        model.train(was_training)
    return PearTraining(coefficients=coefs.values(), losses=losses, steps=steps, lr=lr)


# --------------------------------------------------------------------------------------------------- head selection
def copy_logit_metric(tokens: Tensor, task: CopyTask) -> Metric:
    """logits [N, B, T, V] → [N]: the mean logit of the correct next token over the scored positions of ``tokens``
    (the second copy after its first token; the authors' "iw" metric reads it at the last position only)."""
    scored = task.targets()
    target = tokens[:, scored]  # [B, n − 1]

    def metric(logits: Tensor) -> Tensor:
        before = logits[:, :, scored.start - 1 : scored.stop - 1]  # [N, B, n − 1, V]: the positions predicting them
        index = target.to(logits.device)[None, :, :, None].expand(logits.shape[0], -1, -1, 1)
        return before.gather(-1, index).squeeze(-1).mean((1, 2))

    return metric


@dataclass(frozen=True)
class PathSelection:
    """What ``path_patching_selection`` found: the change of the copied token's logit per head and the heads kept."""

    change: Tensor  # [L, H]: metric with the head's direct path mean-ablated, minus the unpatched metric
    heads: list[Head]  # the k heads with the largest positive change, largest first
    base: float  # the unpatched metric


@torch.no_grad()
def path_patching_selection(
    model: nn.Module, task: CopyTask, k: int, batch: int = 4, seed: int = 0, batch_size: int = 16
) -> PathSelection:
    """PEAR's suppression heads: the ``k`` heads whose direct path to the logits, replaced by its batch mean, raises
    the copied token's logit most on a batch of ``task`` drawn with ``seed`` (see the module docstring)."""
    from attnlab.experiments.ioi import top_heads

    if k < 1:
        raise ConfigError("select", k, "must be at least 1 head")
    if batch < 2:
        raise ConfigError("batch", batch, "must be at least 2 (the batch mean replaces each head)")
    device = next(model.parameters()).device
    tokens = task.batch(batch, torch.Generator().manual_seed(seed)).to(device)
    logits, reference = run_with_cache(model, tokens, path_patching_names(model))
    layers = range(len(model.blocks))
    melted = {z_name(layer): reference[z_name(layer)].mean(0, keepdim=True).expand_as(reference[z_name(layer)])
              for layer in layers}  # fmt: skip
    metric = copy_logit_metric(tokens, task)
    base = float(metric(logits[None])[0])
    change = path_patch_heads(model, reference, melted, None, metric, batch_size=batch_size) - base
    return PathSelection(change=change, heads=top_heads(change.where(change > 0, torch.nan), k), base=base)


# --------------------------------------------------------------------------------------------------- the experiment
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
    selection: PathSelection | None = None  # the path-patching selection, when it chose the heads

    def suppression(self) -> list[tuple[Head, float]]:
        """Heads whose coefficient ended below 1, smallest first."""
        return suppression_heads(self.coefficients)

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
            t.add_row(label, cell(s.copy_loss), cell(s.copy_acc), cell(s.first_loss), cell(text) if text else "-")
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


def held_out_batch(task: CopyTask, eval_batch: int, seed: int) -> Tensor:
    """The held-out copying set of the run with training seed ``seed``: ``eval_batch`` sequences drawn from
    ``seed + 1_000_003`` (never a training batch's generator). LoFiT (``experiments.lofit``) measures on the same."""
    if eval_batch < 1:
        raise ConfigError("eval_batch", eval_batch, "must be at least 1")
    return task.batch(eval_batch, torch.Generator().manual_seed(seed + 1_000_003))


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
    select: int | None = None,
    select_batch: int = 4,
) -> PearResult:
    """Train PEAR coefficients (``train_pear``) and measure a held-out copying set before and after.

    ``heads`` (default: every head of ``layers``, default all layers). Training batches are drawn from a generator
    seeded with ``seed``, the held-out set from ``seed + 1_000_003``: different random sequences. The "after"
    numbers use the learned coefficients as fixed floats through ``scale_heads`` (the deployed form). With
    ``text_tokens`` [B, T] the mean next-token loss on them is measured too (a side-effect check). ``select``: re-weight
    only the ``select`` heads that ``path_patching_selection`` finds on ``select_batch`` sequences of a third seed
    (``seed + 2_000_003``), instead of ``heads`` / ``layers``.
    """
    task = task or CopyTask(n=25, low=100, high=20000, bos=1)
    selection = None
    if select is not None:
        if heads is not None or layers is not None:
            raise ConfigError("select", select, "selects the heads itself: give no heads or layers with it")
        selection = path_patching_selection(model, task, select, select_batch, seed + 2_000_003)
        heads = selection.heads
    heads = check_heads(model, heads) if heads is not None else all_heads(model, layers)
    device = next(model.parameters()).device
    held_out = held_out_batch(task, eval_batch, seed).to(device)
    text_tokens = text_tokens.to(device) if text_tokens is not None else None
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
        selection=selection,
    )
