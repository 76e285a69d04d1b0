"""The logic behind ``attnlab inspect``: run a pretrained model with every attention pattern captured, score each
head (``head_table``) and, for a causal LM, measure the next-token loss.

The induction task follows ``metrics.induction_score``'s index convention: ``[BOS] + x + x`` with ``len(x) = n``, so
``T = 2n + 1``; BOS = 0, first copy 1..n, second copy n+1..2n (``copy_task``). A trained run of a results database
is loaded by ``attnlab.runner.checkpoint_model.load_run``: the lens is a library and does not read the runner's
store.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from attnlab.lens.capture import capture_patterns
from attnlab.lens.copy_task import copy_losses, induction_tokens
from attnlab.lens.losses import next_token_nll
from attnlab.lens.metrics import head_table, hidden_sinks

__all__ = [
    "MODELS",
    "MODEL_INFO",
    "analyse",
    "capture_patterns",
    "copy_losses",
    "fmt",
    "induction_tokens",
    "inspect_model",
    "load_model",
    "sorted_rows",
    "write_csv",
    "write_heatmaps",
]

MODELS = ("smollm2", "minilm")


# Per model: causal?, the token-id range the induction task draws from (ordinary tokens, no special ones), the id
# prepended as position 0 (SmolLM2: <|im_start|> = 1, its BOS; MiniLM: [CLS] = 101).
MODEL_INFO: dict[str, dict[str, Any]] = {
    "smollm2": {"causal": True, "low": 100, "high": 20000, "bos": 1},
    "minilm": {"causal": False, "low": 2000, "high": 29000, "bos": 101},
}


def load_model(name: str) -> tuple[nn.Module, Any]:
    """``name`` in ``MODELS`` → (model in eval mode, ``tokenizers.Tokenizer``). Raises ValueError for other names."""
    if name == "smollm2":
        from attnlab.lens.pretrained.smollm2 import load_smollm2

        return load_smollm2()
    if name == "minilm":
        from attnlab.lens.pretrained.minilm import load_minilm

        return load_minilm()
    raise ValueError(f"unknown model {name!r}; allowed: {', '.join(MODELS)}")


def analyse(
    logits: Tensor, pats: Mapping[int, Tensor], tokens: Tensor, causal: bool, seq_half: int | None = None
) -> tuple[list[dict], dict[str, float]]:
    """Head-table rows and losses from a captured pass (see ``inspect_model``)."""
    repeats = tokens[0].unique().numel() < tokens.shape[-1]
    rows = head_table(pats, tokens=tokens if repeats else None, seq_half=seq_half)
    if not causal:
        for layer, P in pats.items():
            idx, _ = hidden_sinks(P, causal=False)
            for row in rows:
                if row["layer"] == layer:
                    row["hidden_sinks"] = idx[idx[:, 0] == row["head"], 1].tolist()
    losses: dict[str, float] = {}
    if causal:
        losses["mean"] = float(next_token_nll(logits, tokens).mean())
        if seq_half is not None:
            losses["first_copy"], losses["second_copy"] = copy_losses(logits, tokens, seq_half)
    return rows, losses


def inspect_model(
    model: nn.Module, tokens: Tensor, causal: bool, seq_half: int | None = None
) -> tuple[list[dict], dict[str, float]]:
    """One forward pass with every ``hook_pattern`` captured → (head-table rows, losses).

    ``rows``: ``metrics.head_table`` (with ``induction`` when ``seq_half`` is given, ``duplicate`` when a token
    repeats), in layer/head order. For a non-causal model ``hidden_sinks`` is recomputed with ``causal=False`` (the
    sink score and rate of key 0 are the same either way). ``losses`` (causal models only, else empty): ``mean``
    over all next-token predictions, plus ``first_copy`` / ``second_copy`` (``copy_losses``) with ``seq_half``.
    """
    logits, pats = capture_patterns(model, tokens)
    return analyse(logits, pats, tokens, causal, seq_half)


def sorted_rows(rows: Sequence[dict], key: str) -> list[dict]:
    """Head-table rows, highest ``key`` first (the table ``attnlab inspect`` prints)."""
    return sorted(rows, key=lambda r: r[key], reverse=True)


def write_csv(rows: Sequence[dict], path: Path) -> Path:
    """The full head table as CSV (``hidden_sinks`` as space-separated key positions)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = list(rows[0])
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        for r in rows:
            w.writerow({**r, "hidden_sinks": " ".join(str(k) for k in r.get("hidden_sinks", []))})
    return path


def write_heatmaps(
    top: Sequence[dict], pats: Mapping[int, Tensor], out: Path, key: str, labels: Sequence[str] | None = None
) -> list[Path]:
    """One PNG per head in ``top``: its pattern (batch 0) as a heatmap, queries down, keys across."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    written = []
    for rank, r in enumerate(top, 1):
        P = pats[r["layer"]][0, r["head"]].float().cpu().numpy()
        fig, ax = plt.subplots(figsize=(6, 5))
        im = ax.imshow(P, cmap="viridis", vmin=0, vmax=max(float(P.max()), 1e-9))
        fig.colorbar(im, ax=ax)
        ax.set_title(f"L{r['layer']}H{r['head']}  {key} = {r[key]:.3f}")
        ax.set_xlabel("key")
        ax.set_ylabel("query")
        if labels is not None and len(labels) <= 64:
            ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=5)
            ax.set_yticks(range(len(labels)), labels, fontsize=5)
        fig.tight_layout()
        path = out / f"{rank:02d}_L{r['layer']}H{r['head']}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def fmt(value: float) -> str:
    """A metric to three decimals; ``nan`` where a metric does not apply to the head."""
    return "nan" if math.isnan(value) else f"{value:.3f}"
