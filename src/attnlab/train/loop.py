"""One plain training loop: AdamW, linear warmup then cosine decay, optional bf16 autocast,
deterministic seeding, periodic evaluation and early stop at a target accuracy."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from attnlab.model.config import ModelConfig
from attnlab.model.transformer import TransformerLM
from attnlab.tasks.base import IGNORE, Batch, Task, TaskConfig
from attnlab.train.config import TrainConfig


@dataclass
class TrainResult:
    final: dict[str, float]  # metrics at the last evaluation, plus steps and timings
    curves: list[tuple[int, str, float]] = field(default_factory=list)  # (step, name, value)
    model: nn.Module | None = None


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup to cfg.lr, then cosine decay to cfg.lr · min_lr_frac at cfg.steps."""
    warmup = int(cfg.warmup_frac * cfg.steps)
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, cfg.steps - warmup)
    floor = cfg.lr * cfg.min_lr_frac
    return floor + (cfg.lr - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Decay matrices only; not biases, norms or 1-D gate parameters."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def loss_and_accuracy(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy and accuracy over scored positions (targets != IGNORE)."""
    flat_logits = logits.float().flatten(0, 1)
    flat_targets = targets.flatten()
    loss = F.cross_entropy(flat_logits, flat_targets, ignore_index=IGNORE)
    scored = flat_targets != IGNORE
    correct = (flat_logits.argmax(-1) == flat_targets) & scored
    return loss, correct.sum() / scored.sum().clamp(min=1)


@torch.no_grad()
def evaluate(model: nn.Module, batch: Batch, cfg: TrainConfig, chunk: int = 256) -> dict[str, float]:
    model.eval()
    total_loss = total_correct = total_scored = 0.0
    for start in range(0, batch.inputs.shape[0], chunk):
        inputs = batch.inputs[start : start + chunk].to(cfg.device)
        targets = batch.targets[start : start + chunk].to(cfg.device)
        with autocast(cfg):
            logits = model(inputs)
        n = float((targets != IGNORE).sum())
        loss, acc = loss_and_accuracy(logits, targets)
        total_loss += float(loss) * n
        total_correct += float(acc) * n
        total_scored += n
    model.train()
    return {"loss": total_loss / max(total_scored, 1), "accuracy": total_correct / max(total_scored, 1)}


def autocast(cfg: TrainConfig) -> torch.autocast:
    device_type = torch.device(cfg.device).type
    return torch.autocast(device_type=device_type, dtype=torch.bfloat16, enabled=cfg.bf16)


def train(
    model_cfg: ModelConfig,
    task_cfg: TaskConfig,
    cfg: TrainConfig,
    seed: int,
    on_eval: Callable[[int, dict[str, float]], None] | None = None,
) -> TrainResult:
    """Train a fresh TransformerLM on the task; deterministic for a given (configs, seed) on one device."""
    torch.manual_seed(seed)
    model = TransformerLM(model_cfg).to(cfg.device)
    task: Task = task_cfg.build(seed)
    eval_set = task.eval_batch(cfg.eval_examples)
    opt = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas, fused=False)
    curves: list[tuple[int, str, float]] = []
    metrics: dict[str, float] = {}
    t0 = time.perf_counter()
    step = 0
    for step in range(1, cfg.steps + 1):
        for group in opt.param_groups:
            group["lr"] = lr_at(step - 1, cfg)
        batch = task.train_batch(step, cfg.batch_size)
        with autocast(cfg):
            logits = model(batch.inputs.to(cfg.device))
        loss, _ = loss_and_accuracy(logits, batch.targets.to(cfg.device))
        if not torch.isfinite(loss):
            raise FloatingPointError(f"training loss is {float(loss)} at step {step}")
        aux = model.aux_loss()  # e.g. a router's load-balance loss; None for most mechanisms
        opt.zero_grad(set_to_none=True)
        (loss if aux is None else loss + aux).backward()
        if cfg.grad_clip is not None:
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        if step % cfg.eval_every == 0 or step == cfg.steps:
            curves.append((step, "train_loss", loss.item()))
            metrics = evaluate(model, eval_set, cfg)
            for name, value in metrics.items():
                curves.append((step, f"eval_{name}", value))
            if on_eval is not None:
                on_eval(step, metrics)
            if cfg.target_accuracy is not None and metrics["accuracy"] >= cfg.target_accuracy:
                break
    train_s = time.perf_counter() - t0
    final = {
        **metrics,
        "steps": float(step),
        "train_s": train_s,
        "params": float(sum(p.numel() for p in model.parameters())),
    }
    return TrainResult(final=final, curves=curves, model=model)
