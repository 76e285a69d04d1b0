"""Softmax vs sigmoid attention: does the attention sink emerge? (Gu et al., "When Attention Sink Emerges in Language
Models: An Empirical View", ICLR 2025, arXiv:2410.10781, §7.4 and Table 6.)

The same small byte-level Transformer LM (same seed, so the same initial weights; the same batches, steps and
optimiser) is trained on the Python reference manual's text (``pydoc_data.topics``, 90 % train / last 10 % held out)
once per attention variant:

- ``softmax``: softmax(q·k/√d);
- ``sigmoid``: σ(q·k/√d + b) with attnlab's default b = −log n, n = the training length (Ramapuram et al. 2024,
  arXiv:2409.04431), no row normalisation;
- ``sigmoid_b0``: σ(q·k/√d) with Z = 1, no bias: the form in Gu et al.'s Table 6 (Sink₁* 0.44 % vs softmax 18.18 % at
  60M parameters).

On a held-out batch of ``seq_len``-byte windows (Gu et al. use T = 64) it reports, per variant, the held-out loss and
the sink rate of the first token, ``metrics.sink_rate`` with ε = 0.3:

    α_0^{l,h} = mean over the queries of A^{l,h}[i, 0];   Sink_0^ε = share of (sample, layer, head) with α_0 > ε

For the sigmoid variants the weights are first row-normalised (``normalise=True``: Gu et al.'s proxy scores
sim / Σ sim, their Sink₁*); a no-op for softmax. The raw (un-normalised) rate is reported too. The paper's smallest
controlled model is 60M parameters trained for 20k steps; the default here (width 64, 4 layers, 4 heads, batches of
16 × 64 bytes, 1000 steps: ~0.2M parameters, ~1M training bytes) takes ~0.1 s of CPU a step, so the effect size
here is this setting's, not the paper's.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from pydantic import Field

from attnlab.config import StrictModel
from attnlab.errors import ConfigError
from attnlab.experiments.text import reference_text
from attnlab.lens.capture import patterns, run_with_cache
from attnlab.lens.metrics import sink_rate, sink_scores
from attnlab.model.config import ModelConfig
from attnlab.model.transformer import TransformerLM
from attnlab.tasks.base import Batch
from attnlab.train.config import TrainConfig
from attnlab.train.loop import fit, loss_and_accuracy

# variant → (normaliser, normaliser_args)
VARIANTS: dict[str, tuple[str, dict[str, float]]] = {
    "softmax": ("softmax", {}),
    "sigmoid": ("sigmoid", {}),
    "sigmoid_b0": ("sigmoid", {"bias": 0.0}),
}


class SinksConfig(StrictModel):
    """The model, data and training budget shared by every variant."""

    d_model: int = Field(64, gt=0)
    n_layers: int = Field(4, gt=0)
    n_heads: int = Field(4, gt=0)
    seq_len: int = Field(64, gt=1)  # training length = evaluation length T (Gu et al.: 64)
    batch_size: int = Field(16, gt=0)
    steps: int = Field(1000, gt=0)
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(0.1, ge=0)
    eval_windows: int = Field(64, gt=0)
    eps: float = Field(0.3, gt=0)
    seed: int = 0
    text_chars: int | None = Field(None, gt=0)  # use only the first characters of the text (tests); None: all


@dataclass(frozen=True)
class SinkResult:
    """One trained variant, measured on the held-out batch."""

    variant: str
    normaliser: str
    bias: float | None  # the sigmoid bias used (None for softmax)
    train_loss: float  # the last step's
    val_loss: float  # nats per byte
    sink_rate: float  # Sink_0^ε, 0 … 1, on row-normalised weights (Gu et al.'s Sink₁*; softmax unchanged)
    sink_rate_raw: float  # on the weights as they are
    alpha0: float  # mean α_0 over layers, heads and samples (row-normalised)
    seconds: float


def byte_splits(cfg: SinksConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, held-out) byte tensors: the UTF-8 bytes of ``reference_text()``, split 90 % / 10 %."""
    data = torch.tensor(list(reference_text(cfg.text_chars).encode()), dtype=torch.long)
    cut = int(0.9 * len(data))
    if cut <= cfg.seq_len + 1 or len(data) - cut <= cfg.seq_len + 1:
        raise ConfigError("text_chars", cfg.text_chars, f"too little text for windows of {cfg.seq_len + 1} bytes")
    return data[:cut], data[cut:]


def windows(data: torch.Tensor, n: int, length: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` random windows of ``length`` bytes from ``data``: [n, length]."""
    starts = torch.randint(0, len(data) - length + 1, (n,), generator=generator)
    return torch.stack([data[s : s + length] for s in starts.tolist()])


def model_config(cfg: SinksConfig, variant: str) -> ModelConfig:
    """The byte-level decoder for ``variant`` (RoPE, pre-norm, MLP blocks)."""
    if variant not in VARIANTS:
        raise ConfigError("variant", variant, "unknown attention variant", VARIANTS)
    normaliser, args = VARIANTS[variant]
    return ModelConfig(
        vocab_size=256,
        d_model=cfg.d_model,
        n_layers=cfg.n_layers,
        n_heads=cfg.n_heads,
        max_seq_len=cfg.seq_len,
        attention={"normaliser": normaliser, "normaliser_args": args, "position": "rope"},
    )


def train_variant(
    cfg: SinksConfig, variant: str, on_step: Callable[[int, float], None] | None = None
) -> tuple[TransformerLM, float]:
    """Train the variant's model on the one training loop (``train.loop.fit``: AdamW, warmup + cosine, grad clip 1);
    returns (model in eval mode, the last step's training loss). ``on_step(step, loss)`` counts steps from 1.

    The seed fixes both the initial weights and the batch order, so every variant sees the same data: the batches
    are random windows drawn, step after step, from one generator seeded with ``cfg.seed``. The loop evaluates the
    held-out batch once, after the last step (``eval_every = steps``); ``measure_sinks`` measures it again with the
    patterns captured.
    """
    train_data, held_out = byte_splits(cfg)
    torch.manual_seed(cfg.seed)
    model = TransformerLM(model_config(cfg, variant))
    tcfg = TrainConfig(
        steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr, weight_decay=cfg.weight_decay, eval_every=cfg.steps
    )
    gen = torch.Generator().manual_seed(cfg.seed)

    def train_batch(step: int, batch_size: int) -> Batch:
        return next_token_batch(windows(train_data, batch_size, cfg.seq_len + 1, gen))

    try:
        result = fit(model, train_batch, next_token_batch(eval_windows(cfg, held_out)), tcfg, on_step=on_step)
    except FloatingPointError as err:
        raise FloatingPointError(f"{variant}: {err}") from None
    last = next(value for _, name, value in reversed(result.curves) if name == "train_loss")
    return model.eval(), last


def next_token_batch(rows: torch.Tensor) -> Batch:
    """Windows [B, T + 1] as a language-modelling batch: inputs ``[:, :-1]``, every next token ``[:, 1:]`` scored."""
    return Batch(inputs=rows[:, :-1], targets=rows[:, 1:])


def eval_windows(cfg: SinksConfig, held_out: torch.Tensor) -> torch.Tensor:
    """The held-out batch every variant is measured on: ``cfg.eval_windows`` windows seeded with ``cfg.seed + 1``."""
    return windows(held_out, cfg.eval_windows, cfg.seq_len + 1, torch.Generator().manual_seed(cfg.seed + 1))


@torch.no_grad()
def measure_sinks(model: TransformerLM, batch: torch.Tensor, eps: float) -> dict[str, float]:
    """Held-out loss and first-token sink metrics of ``model`` on ``batch`` [B, T + 1] (inputs [:, :-1])."""
    logits, cache = run_with_cache(model, batch[:, :-1], lambda name: name.endswith("attn.hook_pattern"))
    loss, _ = loss_and_accuracy(logits, batch[:, 1:])
    pats = patterns(cache)
    alpha0 = torch.stack([sink_scores(P, 0, normalise=True) for P in pats.values()])
    return {
        "val_loss": float(loss),
        "sink_rate": float(sink_rate(pats, k=0, eps=eps, normalise=True)),
        "sink_rate_raw": float(sink_rate(pats, k=0, eps=eps)),
        "alpha0": float(alpha0.mean()),
    }


def run_sinks_experiment(
    cfg: SinksConfig,
    variants: Sequence[str] = tuple(VARIANTS),
    on_step: Callable[[str, int, float], None] | None = None,
) -> list[SinkResult]:
    """Train every variant under ``cfg`` and measure it on one held-out batch (the same for all)."""
    for v in variants:
        if v not in VARIANTS:
            raise ConfigError("variant", v, "unknown attention variant", VARIANTS)
    _, held_out = byte_splits(cfg)
    eval_batch = eval_windows(cfg, held_out)
    results = []
    for variant in variants:
        t0 = time.perf_counter()
        step_cb = None if on_step is None else (lambda step, loss, v=variant: on_step(v, step, loss))
        model, last = train_variant(cfg, variant, step_cb)
        metrics = measure_sinks(model, eval_batch, cfg.eps)
        normaliser = model.blocks[0].attn.normaliser
        results.append(
            SinkResult(
                variant=variant,
                normaliser=VARIANTS[variant][0],
                bias=getattr(normaliser, "bias", None),
                train_loss=last,
                seconds=time.perf_counter() - t0,
                **metrics,
            )
        )
    return results
