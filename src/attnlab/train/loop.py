"""One plain training loop: AdamW, linear warmup then cosine decay, on a device in a precision (bf16 or fp16
autocast, fp16 with a gradient scaler: ``attnlab.train.device``), deterministic seeding, periodic evaluation,
early stop at a target accuracy, and length extrapolation.

AdamW is Loshchilov & Hutter, "Decoupled Weight Decay Regularization" (2019, arXiv:1711.05101), decaying matrices
only; the schedule is linear warmup then cosine decay to a floor (SGDR's cosine, arXiv:1608.03983), as in nanoGPT's
``train.py`` (``get_lr``).

``train`` builds the model, ``build_model(model_cfg)`` (a ``TransformerLM`` for single-stream tasks, an
``EncoderDecoder`` for sequence-to-sequence tasks, whose batches carry ``source``), and the task from their configs
(its training batches masked by MEAP with ``TrainConfig.meap_mask_fraction``: ``attnlab.train.meap``), then runs
``fit``: the loop itself, on any built model and any source of batches (an experiment with its own data,
such as ``attnlab.experiments.sinks``, calls ``fit`` directly).

Length extrapolation (``TrainConfig.extrapolate``): after training, for each factor f the task is rebuilt with
``with_length(round(f · T))`` and its evaluation set scored, giving final metrics ``loss@{f}x`` and
``accuracy@{f}x`` (and ``exact_match@{f}x`` for a task whose answers are scored whole: ``metric_names``). A model
whose position encoding cannot represent the longer sequence (learned absolute positions: a table of ``max_seq_len``
rows) raises ``PositionRangeError``; the loop records NaN for its metrics, logs a warning and keeps the reason in
``TrainResult.notes``. Evaluation is chunked by tokens, so memory at 8× the training length stays bounded.

The model lives on ``TrainConfig.device`` (``auto`` resolved once); each batch is built on the CPU by its task and
moved there once per step; only the scalars that are logged (the loss, the evaluation sums) come back.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from attnlab.errors import ConfigError
from attnlab.model.config import ModelConfig
from attnlab.model.encdec import build_model
from attnlab.model.positions import check_positions, with_position
from attnlab.model.transformer import PositionRangeError
from attnlab.tasks.base import IGNORE, Batch, Task, TaskConfig, exact_match, extrapolation_tasks
from attnlab.train.config import TrainConfig
from attnlab.train.device import autocast, grad_scaler, resolve_device
from attnlab.train.meap import meap_batches, model_vocab
from attnlab.train.state import TrainState, capture, lineage_json, restore

log = logging.getLogger(__name__)

EVAL_TOKENS = 16384  # tokens (source + target) per evaluation chunk: 256 sequences of 64


@dataclass
class TrainResult:
    final: dict[str, float]  # metrics at the last evaluation, plus steps, timings and extrapolation metrics
    curves: list[tuple[int, str, float]] = field(default_factory=list)  # (step, name, value)
    model: nn.Module | None = None
    notes: list[str] = field(default_factory=list)  # why a metric is NaN (e.g. learned positions at 2x)
    state: TrainState | None = None  # with cfg.stop_at: the whole state, to continue from (attnlab.train.state)
    snapshots: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)  # cfg.checkpoint_every: step → weights


def keeps_snapshot(step: int, every: int | None) -> bool:
    """Whether the weights at ``step`` are kept with ``checkpoint_every = every``: at every·2ᵏ (k ≥ 0), so a run of
    S steps keeps about log₂(S / every) of them, dense early, where training changes fastest."""
    if every is None or step % every:
        return False
    multiple = step // every
    return multiple & (multiple - 1) == 0


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


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW on ``param_groups``, multi-tensor (``foreach``): one call per operation for all parameters instead of a
    Python loop over them. Bitwise the same update as the per-tensor loop PyTorch picks by default on CPU (the same
    kernels, in the same order; checked in tests/train/test_step_overhead.py); on CUDA it is PyTorch's default."""
    return torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas, foreach=True)


def token_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over scored positions (targets != IGNORE), in float32: the training loss."""
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=IGNORE)


def loss_and_accuracy(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy and accuracy over scored positions (targets != IGNORE)."""
    scored = targets != IGNORE
    correct = (logits.argmax(-1) == targets) & scored  # argmax of bf16 logits = argmax of their float32 copy
    return token_loss(logits, targets), correct.sum() / scored.sum().clamp(min=1)


def log_z_squared(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """mean(log² Z) over scored positions, Z = Σ exp(logits) of each position: the z-loss term (float32)."""
    scored = targets.flatten() != IGNORE
    log_z = torch.logsumexp(logits.float().flatten(0, 1)[scored], dim=-1)
    return log_z.square().mean() if log_z.numel() else log_z.sum()


def to_device(batch: Batch, device: torch.device, rows: slice = slice(None)) -> Batch:
    """``batch`` (its ``rows``) on ``device``: one copy per tensor, none when it is there already."""

    def move(t: torch.Tensor) -> torch.Tensor:
        return t[rows].to(device, non_blocking=True)

    return Batch(move(batch.inputs), move(batch.targets), None if batch.source is None else move(batch.source))


def run_model(model: nn.Module, batch: Batch) -> torch.Tensor:
    """The model's logits [B, T, V] on ``batch.inputs``, with ``source=batch.source`` when the batch has one (an
    encoder-decoder); the batch is on the model's device."""
    if batch.source is None:
        return model(batch.inputs)
    return model(batch.inputs, source=batch.source)


def metric_names(sequence_metric: bool = False) -> tuple[str, ...]:
    """The metrics ``evaluate`` reports: ``loss`` and ``accuracy``, and ``exact_match`` for a task whose
    ``TaskConfig.sequence_metric`` is set (the one place that decides which metrics a run reports)."""
    return ("loss", "accuracy", "exact_match") if sequence_metric else ("loss", "accuracy")


@torch.no_grad()
def evaluate(
    model: nn.Module,
    batch: Batch,
    cfg: TrainConfig,
    chunk: int = 256,
    max_tokens: int = EVAL_TOKENS,
    *,
    sequence_metric: bool = False,
) -> dict[str, float]:
    """Cross-entropy and accuracy over every scored position of ``batch``, averaged per scored token; with
    ``sequence_metric``, also ``exact_match``, the fraction of sequences whose every scored position is right
    (``tasks.base.exact_match``), averaged per sequence. The keys are ``metric_names(sequence_metric)``.

    Sequences are scored ``min(chunk, max_tokens // tokens per sequence)`` at a time (at least one).
    """
    device = resolve_device(cfg.device)
    model.eval()
    try:
        per_row = batch.inputs.shape[1] + (batch.source.shape[1] if batch.source is not None else 0)
        step = max(1, min(chunk, max_tokens // max(per_row, 1)))
        total_loss = total_correct = total_scored = total_exact = 0.0
        for start in range(0, batch.inputs.shape[0], step):
            chunk_batch = to_device(batch, device, slice(start, start + step))
            with autocast(device, cfg.precision):
                logits = run_model(model, chunk_batch)
            n = (chunk_batch.targets != IGNORE).sum()
            loss, acc = loss_and_accuracy(logits, chunk_batch.targets)
            # in float64, as Python floats were: one copy back per chunk
            sums = torch.stack([loss.double() * n, acc.double() * n, n.double()]).tolist()
            total_loss += sums[0]
            total_correct += sums[1]
            total_scored += sums[2]
            if sequence_metric:
                rows = chunk_batch.targets.shape[0]
                total_exact += float(exact_match(logits, chunk_batch.targets)) * rows
    finally:
        model.train()
    out = {"loss": total_loss / max(total_scored, 1), "accuracy": total_correct / max(total_scored, 1)}
    if sequence_metric:
        out["exact_match"] = total_exact / max(batch.inputs.shape[0], 1)
    return out


def evaluate_extrapolation(
    model: nn.Module, task_cfg: TaskConfig, cfg: TrainConfig, seed: int
) -> tuple[dict[str, float], list[str]]:
    """``loss@{f}x`` and ``accuracy@{f}x`` (and ``exact_match@{f}x`` for a task with ``sequence_metric``) for each
    factor f of ``cfg.extrapolate``, and ``…@{f}x[name]`` (f = 1 included) under each of
    ``cfg.extrapolate_positions`` (see the module docstring).

    Returns the metrics and one note per factor the model could not evaluate (its metrics are NaN).
    """
    metrics: dict[str, float] = {}
    notes: list[str] = []
    longer = [
        (label, t, t.build(seed).eval_batch(cfg.eval_examples))
        for label, t in extrapolation_tasks(task_cfg, cfg.extrapolate)
    ]
    variants: list[tuple[str, nn.Module]] = [("", model)]
    for name in cfg.extrapolate_positions:  # the same weights under another relative encoding
        variants.append((f"[{name}]", with_position(copy.deepcopy(model), name)))
    for suffix, variant in variants:
        sets = longer if not suffix else [("1x", task_cfg, None), *longer]
        for label, task, eval_set in sets:
            if eval_set is None:
                eval_set = task.build(seed).eval_batch(cfg.eval_examples)
            try:
                result = evaluate(variant, eval_set, cfg, sequence_metric=task_cfg.sequence_metric)
            except PositionRangeError as err:
                result = dict.fromkeys(metric_names(task_cfg.sequence_metric), math.nan)
                notes.append(f"{label}{suffix} (length {task.seq_len}): {err}")
                log.warning("length extrapolation %s%s (length %d) not evaluated: %s", label, suffix, task.seq_len, err)
            for name, value in result.items():
                metrics[f"{name}@{label}{suffix}"] = value
    return metrics, notes


def compiled(model: nn.Module, cfg: TrainConfig) -> nn.Module:
    """``torch.compile(model)`` when ``cfg.compile`` (it shares the parameters), else the model itself. On CPU
    the compiled code is C++: without a compiler this is a ``ConfigError``, not an error deep in inductor."""
    if not cfg.compile:
        return model
    from attnlab.attention.fast.flex import compiler_available

    if resolve_device(cfg.device).type == "cpu" and not compiler_available():
        raise ConfigError(
            "train.compile", True, "torch.compile on CPU needs a C++ compiler and none is on PATH", [False]
        )
    return torch.compile(model)  # type: ignore[return-value]


def train(
    model_cfg: ModelConfig,
    task_cfg: TaskConfig,
    cfg: TrainConfig,
    seed: int,
    on_eval: Callable[[int, dict[str, float]], None] | None = None,
    *,
    resume: TrainState | None = None,
    probe: Callable[[nn.Module], dict[str, float]] | None = None,
) -> TrainResult:
    """Train a fresh model (``build_model(model_cfg)``) on the task; deterministic for a given (configs, seed) on
    one device. With ``cfg.extrapolate``, the final metrics include the length-extrapolation metrics. ``resume``:
    continue the same run from that state (``fit``), with results identical to never having stopped."""
    if task_cfg.mode != model_cfg.mode:
        raise ConfigError(
            "model.mode", model_cfg.mode, f"task {task_cfg.name!r} needs a {task_cfg.mode} model", [task_cfg.mode]
        )
    extrapolation_tasks(task_cfg, cfg.extrapolate)  # reject a task without with_length before training
    if model_cfg.vocab_size < model_vocab(task_cfg.vocab_size, cfg.meap_mask_fraction):
        needed = model_vocab(task_cfg.vocab_size, cfg.meap_mask_fraction)
        raise ConfigError(
            "model.vocab_size",
            model_cfg.vocab_size,
            f"MEAP masks with the reserved id {task_cfg.vocab_size}: the model needs {needed} ids",
            f"{needed} …",
        )
    check_positions(model_cfg.attention.position, cfg.extrapolate_positions)
    torch.manual_seed(seed)
    model = build_model(model_cfg).to(resolve_device(cfg.device))
    task: Task = task_cfg.build(seed)
    eval_set = task.eval_batch(cfg.eval_examples)
    batches = meap_batches(task.train_batch, cfg.meap_mask_fraction, task_cfg.vocab_size, seed)  # training only
    result = fit(
        model,
        batches,
        eval_set,
        cfg,
        on_eval=on_eval,
        resume=resume,
        probe=probe,
        sequence_metric=task_cfg.sequence_metric,
    )
    extrapolated, result.notes = evaluate_extrapolation(model, task_cfg, cfg, seed)
    stats = {name: result.final.pop(name) for name in RUN_STATS}
    result.final.update(extrapolated)
    result.final.update(stats)  # the key order of ``final``: evaluation, extrapolation, then the run statistics
    return result


RUN_STATS = ("steps", "train_s", "params")  # the entries ``fit`` adds to the final evaluation metrics


def fit(
    model: nn.Module,
    train_batch: Callable[[int, int], Batch],
    eval_set: Batch,
    cfg: TrainConfig,
    *,
    on_eval: Callable[[int, dict[str, float]], None] | None = None,
    on_step: Callable[[int, float], None] | None = None,
    resume: TrainState | None = None,
    probe: Callable[[nn.Module], dict[str, float]] | None = None,
    sequence_metric: bool = False,
) -> TrainResult:
    """The training loop itself, on a model that is already built (and seeded) and a source of batches.

    ``train_batch(step, batch_size)`` gives the batch of step 1, 2, …, ``cfg.steps``, called once per step in that
    order (``Task.train_batch``, or any other source, e.g. a generator-driven sampler). AdamW on ``param_groups``,
    ``lr_at``'s warmup and cosine decay, gradient clipping at ``cfg.grad_clip``, a model's ``aux_loss()`` and
    ``cfg.z_loss`` · ``log_z_squared`` added to the loss; every ``cfg.eval_every`` steps and at the last one the
    model is evaluated on ``eval_set`` (``on_eval(step, metrics)``), and training stops early once
    ``cfg.target_accuracy`` is reached.
    ``on_step(step, loss)`` is called after every update with that step's training loss.

    ``cfg.stop_at`` stops at that step under the schedule of ``cfg.steps`` and returns the whole training state
    (``TrainResult.state``); ``resume`` (a state of the same run, ``attnlab.train.state``) trains on from its step,
    with its curves, bitwise as if the run had never stopped; a state that stopped early at the target accuracy
    has nothing left to train and is returned as it is.

    ``probe(model)`` (``train.probes``: the runner passes the lens's training probes) runs at each evaluation and
    its values join the curves; ``cfg.checkpoint_every`` keeps the weights at the steps ``keeps_snapshot`` names.
    ``sequence_metric``: each evaluation also reports ``exact_match`` (``evaluate``; ``train`` passes the task's
    ``TaskConfig.sequence_metric``).

    Returns the last evaluation's metrics plus ``steps``, ``train_s`` and ``params`` (``RUN_STATS``) as ``final``,
    the curves, and the model (in training mode).
    """
    device = resolve_device(cfg.device)
    snapshots: dict[int, dict[str, torch.Tensor]] = {}
    model.to(device)
    stepper = compiled(model, cfg)  # the training steps' forward (evaluation runs the eager model)
    opt = make_optimizer(model, cfg)
    scaler = grad_scaler(device, cfg.precision)  # fp16 only; a pass-through otherwise
    curves: list[tuple[int, str, float]] = []
    metrics: dict[str, float] = {}
    lineage, before_s, reached = lineage_json(cfg.model_dump(mode="json")), 0.0, False
    if resume is not None:
        restore(resume, model, opt, scaler, train_config=lineage, until=cfg.stop_at or cfg.steps)
        curves, metrics, before_s, reached = list(resume.curves), dict(resume.metrics), resume.train_s, resume.finished
    step = first = resume.step if resume is not None else 0
    last = step if reached else (cfg.stop_at or cfg.steps)
    t0 = time.perf_counter()
    for step in range(first + 1, last + 1):
        for group in opt.param_groups:
            group["lr"] = lr_at(step - 1, cfg)
        batch = to_device(train_batch(step, cfg.batch_size), device)
        with autocast(device, cfg.precision):
            logits = run_model(stepper, batch)
        loss = token_loss(logits, batch.targets)  # no accuracy: its argmax is a pass over the logits
        if not torch.isfinite(loss):
            raise FloatingPointError(f"training loss is {float(loss)} at step {step}")
        aux = model.aux_loss()  # e.g. a router's load-balance loss; None for most mechanisms
        total = loss if aux is None else loss + aux
        if cfg.z_loss:
            total = total + cfg.z_loss * log_z_squared(logits, batch.targets)
        opt.zero_grad(set_to_none=True)
        scaler.scale(total).backward()
        if cfg.grad_clip is not None:
            scaler.unscale_(opt)  # clip the true gradients
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        scaler.step(opt)  # skips the step when fp16 gradients overflowed, and lowers the scale
        scaler.update()
        if on_step is not None:
            on_step(step, loss.item())
        if step % cfg.eval_every == 0 or step == cfg.steps:
            curves.append((step, "train_loss", loss.item()))
            metrics = evaluate(model, eval_set, cfg, sequence_metric=sequence_metric)
            for name, value in metrics.items():
                curves.append((step, f"eval_{name}", value))
            if probe is not None:
                curves += [(step, name, value) for name, value in probe(model).items()]
            if keeps_snapshot(step, cfg.checkpoint_every):
                snapshots[step] = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
            if on_eval is not None:
                on_eval(step, metrics)
            if cfg.target_accuracy is not None and metrics["accuracy"] >= cfg.target_accuracy:
                reached = True
                break
    final = {
        **metrics,
        "steps": float(step),
        "train_s": before_s + time.perf_counter() - t0,
        "params": float(sum(p.numel() for p in model.parameters())),
    }
    state = None
    if cfg.stop_at is not None:
        state = capture(
            model,
            opt,
            scaler,
            step=step,
            finished=reached,
            train_config=lineage,
            curves=curves,
            metrics=metrics,
            train_s=final["train_s"],
        )
    return TrainResult(final=final, curves=curves, model=model, state=state, snapshots=snapshots)
