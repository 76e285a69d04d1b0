"""The two workhorse experiments of the claims, so that every claim of one kind runs the same budget: byte-level
language modelling of the Python standard library, and MQAR; three seeds, the learning rate searched over
{1e-3, 3e-3} by successive halving (a quarter of the steps, then the better rate to the end)."""

from __future__ import annotations

from typing import Any

from attnlab.runner.config import SearchConfig, Sweep
from attnlab.train.config import TrainConfig

SEEDS = [0, 1, 2]
LRS = [1e-3, 3e-3]


def lm_sweep(
    name: str,
    mechanisms: list[dict[str, Any]],
    *,
    positions: tuple[str, ...] = ("rope",),
    length: int = 128,
    steps: int = 600,
    n_layers: int = 2,
    extrapolate: tuple[float, ...] = (),
) -> Sweep:
    """Byte-level LM at ``length`` (width 64, 4 heads), evaluated at the ``extrapolate`` factors too."""
    return Sweep(
        name=name,
        tasks=[{"name": "lm", "corpus": "stdlib", "tokenizer": "byte", "length": length}],
        mechanisms=mechanisms,
        positions=list(positions),
        widths=[64],
        seeds=SEEDS,
        search=SearchConfig(lrs=LRS, min_steps=steps // 4 // 100 * 100 or 100),
        model={"n_layers": n_layers, "n_heads": 4},
        train=TrainConfig(steps=steps, batch_size=16, eval_every=100, eval_examples=64, extrapolate=list(extrapolate)),
    )


def mqar_sweep(name: str, mechanisms: list[dict[str, Any]], *, steps: int = 1600) -> Sweep:
    """MQAR (vocabulary 64, length 32, 4 key-value pairs) on an attention-only 2-layer model of width 64."""
    return Sweep(
        name=name,
        tasks=[{"name": "mqar", "vocab": 64, "length": 32, "num_kv_pairs": 4}],
        mechanisms=mechanisms,
        positions=["rope"],
        widths=[64],
        seeds=SEEDS,
        search=SearchConfig(lrs=LRS, min_steps=steps // 4 // 100 * 100 or 100),
        model={"n_layers": 2, "n_heads": 4, "mlp": False},
        train=TrainConfig(steps=steps, batch_size=64, eval_every=100, eval_examples=256, target_accuracy=0.99),
    )
