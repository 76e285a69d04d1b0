"""PEAR: learn one output coefficient per attention head on a copying proxy task, the model frozen.

Tan, Qian, Lv, Lin, Wu, Wang, Wang, Wu, Lu, Yan, "PEAR: Position-Embedding-Agnostic Attention Re-weighting Enhances
Retrieval-Augmented Generation with Zero Inference Overhead" (WWW 2025, arXiv:2409.19745); code ``TTArch/PEAR-RAG``
(``train/data/gener.py``, ``train/train.py``, ``train/train.sh``, ``train/pear_longma4train/ablation_40_LongMa.py``).

What the authors' code does, and what is done here:

- **proxy task** (``gener.py``): ``x = r_1..r_n r_1..r_n`` with ``r_i`` uniform over the vocabulary minus ids 0, 1,
  ``n = 50``, the loss on the second half only (labels −100 on the first). Here: the same layout, optionally after a
  BOS token (attnlab's ``[BOS] + x + x``, as ``lens.inspect.induction_tokens``), ids drawn from a range of ordinary
  tokens, and the loss on the second copy *minus its first token* (``r_1`` after ``r_n`` cannot be inferred by
  copying; the authors include it). ``n`` is a parameter (the CPU experiment uses a shorter one).
- **re-weighting** (``ablation_40_LongMa.py``): per selected head a scalar ``α_h`` (init 1) multiplies the head's
  output before the output projection, ``o_h ← o_h + (α_h − 1)·o_h``; here ``hook_z`` scaled by
  ``interventions.scale_heads`` (identical for a bias-free ``o_proj``, which Llama and SmolLM2 have).
- **training** (``train.py`` / ``train.sh``): only the α are trainable, the LLM frozen; AdamW (Hugging Face Trainer
  default, weight decay 0), lr 5e-3, linear schedule with 2 warm-up steps, batch 1 × gradient accumulation 20, one
  epoch over 50 000 samples, bf16. Here: Adam (= AdamW without weight decay), the same schedule shape, float32,
  and far fewer steps (a parameter) with a larger lr to compensate.
- **regularisation**: the released ``train.py`` adds none; a penalty ``(Σ_h α_{l,h} − H)²`` per re-weighted layer is
  present but commented out. It is offered as ``sum_penalty`` (weight, default 0 = the released code) over the
  selected heads of each layer. What the paper text (arXiv:2409.19745) says about it is unverified: it was not
  read here.
- **head selection**: the authors first find "RAG-suppression heads" by path patching on the proxy task and
  re-weight only those (5–40 heads of Llama-2-7B). Path patching is not reproduced: here the caller picks the heads
  (all heads of some layers by default) and the heads whose learned α ends below 1 are reported as suppression
  heads — the paper reports the learned coefficients end below 1.

The coefficients can be folded into the output projection's columns for deployment (zero inference overhead);
``PearCoefficients.values()`` gives them as plain floats for ``scale_heads``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnlab.errors import ConfigError
from attnlab.lens.interventions import Head, check_heads, head_label, scale_heads


# --------------------------------------------------------------------------------------------------- the proxy task
@dataclass(frozen=True)
class CopyTask:
    """``[BOS] + x + x`` with ``x`` = ``n`` ids uniform in ``[low, high)`` (no BOS when ``bos`` is None).

    Scored targets: the second copy after its first token, ``n − 1`` per sequence (see the module docstring).
    """

    n: int = 50
    low: int = 2
    high: int = 32000
    bos: int | None = None

    def __post_init__(self) -> None:
        if self.n < 2:
            raise ConfigError("seq_len", self.n, "the copied sequence needs at least 2 tokens")
        if not 0 <= self.low < self.high:
            raise ConfigError("token range", f"[{self.low}, {self.high})", "needs 0 <= low < high")

    @property
    def offset(self) -> int:
        """Position of ``x``'s first token (1 after a BOS, else 0)."""
        return 0 if self.bos is None else 1

    @property
    def length(self) -> int:
        """Tokens per sequence: ``2n`` (+ 1 with BOS)."""
        return self.offset + 2 * self.n

    def batch(self, size: int, generator: torch.Generator) -> Tensor:
        """``size`` sequences [size, length], drawn from ``generator`` (so a seed fixes the set)."""
        if size < 1:
            raise ConfigError("batch", size, "must be at least 1")
        x = torch.randint(self.low, self.high, (size, self.n), generator=generator)
        parts = [x, x] if self.bos is None else [torch.full((size, 1), self.bos), x, x]
        return torch.cat(parts, dim=1)

    def targets(self) -> slice:
        """Token positions scored: the second copy without its first token, ``offset + n + 1 .. offset + 2n − 1``."""
        return slice(self.offset + self.n + 1, self.offset + 2 * self.n)


def _upcast(x: Tensor) -> Tensor:
    """Half precision → float32 for the loss; float32 / float64 unchanged."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def copy_loss(logits: Tensor, tokens: Tensor, task: CopyTask) -> Tensor:
    """Mean next-token cross-entropy (nats) on the task's scored targets; differentiable. ``logits`` [B, T, V]."""
    t = task.targets()
    pred = _upcast(logits[:, t.start - 1 : t.stop - 1])  # the logit at t − 1 predicts the token at t
    return F.cross_entropy(pred.transpose(1, 2), tokens[:, t])


@torch.no_grad()
def copy_metrics(model: nn.Module, tokens: Tensor, task: CopyTask, chunk: int = 16) -> tuple[float, float]:
    """(loss in nats/token, greedy accuracy) of ``model`` on the scored targets of ``tokens`` [B, T].

    Accuracy: the share of targets that are the argmax of the model's next-token distribution. Evaluated in chunks
    of ``chunk`` sequences.
    """
    t = task.targets()
    total_loss, correct, count = 0.0, 0, 0
    for part in tokens.split(chunk):
        logits = model(part)
        pred = _upcast(logits[:, t.start - 1 : t.stop - 1])
        target = part[:, t]
        total_loss += float(F.cross_entropy(pred.transpose(1, 2), target, reduction="sum"))
        correct += int((pred.argmax(-1) == target).sum())
        count += target.numel()
    return total_loss / count, correct / count


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
        return sorted(((h, a) for h, a in self.coefficients.items() if a < 1.0), key=lambda x: x[1])


def linear_schedule(step: int, steps: int, warmup: int) -> float:
    """The lr multiplier of step ``step`` (0-based): linear warm-up over ``warmup`` steps, then linear decay to 0.

    Hugging Face's ``linear`` schedule (as in the authors' ``train.sh``), shifted by one step so the first update
    is not wasted at lr 0.
    """
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, (steps - step) / max(1, steps - warmup))


class _Adam:
    """Adam (Kingma & Ba 2015, arXiv:1412.6980) without weight decay, for one parameter tensor::

        m ← β1 m + (1 − β1) g,   v ← β2 v + (1 − β2) g²,   θ ← θ − lr · m̂ / (√v̂ + ε)

    with bias corrections m̂ = m / (1 − β1^t), v̂ = v / (1 − β2^t); AdamW with weight decay 0 is the same. Written
    out because ``torch.optim``'s first step imports ``torch._dynamo`` (seconds on a loaded machine).
    """

    def __init__(self, param: Tensor, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        self.b1, self.b2, self.eps = betas[0], betas[1], eps
        self.m, self.v, self.t = torch.zeros_like(param), torch.zeros_like(param), 0

    @torch.no_grad()
    def step(self, param: Tensor, lr: float) -> None:
        g = param.grad
        if g is None:
            return
        self.t += 1
        self.m.mul_(self.b1).add_(g, alpha=1 - self.b1)
        self.v.mul_(self.b2).addcmul_(g, g, value=1 - self.b2)
        m_hat = self.m / (1 - self.b1**self.t)
        v_hat = self.v / (1 - self.b2**self.t)
        param.sub_(lr * m_hat / (v_hat.sqrt() + self.eps))


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
    adam = _Adam(coefs.alpha)
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
            coefs.alpha.grad = None
            total.backward()
            adam.step(coefs.alpha, lr * linear_schedule(step, steps, warmup))
            losses.append(float(loss.detach()))
            if on_step is not None:
                on_step(step, losses[-1])
    finally:
        for p, flag in flags.items():
            p.requires_grad_(flag)
        model.train(was_training)
    return PearTraining(coefficients=coefs.values(), losses=losses, steps=steps, lr=lr)
