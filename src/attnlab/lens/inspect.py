"""The logic behind ``attnlab inspect``: run a pretrained model with every attention pattern captured, score each
head (``head_table``) and, for a causal LM, measure the next-token loss.

The induction task follows ``metrics.induction_score``'s index convention: ``[BOS] + x + x`` with ``len(x) = n``, so
``T = 2n + 1``; BOS = 0, first copy 1..n, second copy n+1..2n.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnlab.lens.capture import patterns, run_with_cache
from attnlab.lens.metrics import head_table, hidden_sinks

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


def load_run(db: str | Path, run_id: str) -> tuple[nn.Module, Any]:
    """A finished run of a results database → (its trained model in eval mode, its ``RunConfig``).

    The weights are the run's safetensors checkpoint (written by the sweep runner when the run finished); the
    architecture is rebuilt from the config stored with the run. Raises ``ConfigError`` when the run is unknown,
    not finished, or has no checkpoint (databases written before checkpoints were stored).
    """
    from safetensors.torch import load_file

    from attnlab.errors import ConfigError
    from attnlab.model.encdec import build_model
    from attnlab.runner.config import RunConfig
    from attnlab.runner.store import Store

    with Store(db) as store:
        row = next((r for r in store.runs() if r["run_id"] == run_id), None)
        if row is None:
            raise ConfigError("run_id", run_id, f"not in {db}")
        if row["status"] != "done":
            raise ConfigError("run_id", run_id, f"is {row['status']}, not done: it has no trained weights")
        path = store.checkpoint_path(run_id)
    if not path.is_file():
        raise ConfigError("run_id", run_id, f"has no checkpoint ({path} is missing; re-run it to store one)")
    cfg = RunConfig.model_validate_json(row["config"])
    model = build_model(cfg.model)
    model.load_state_dict(load_file(path))
    return model.eval(), cfg


def induction_tokens(n: int, seed: int, low: int, high: int, bos: int | None) -> Tensor:
    """``[bos] + x + x`` as ids [1, 2n + 1] (``[1, 2n]`` without ``bos``); x is n ids uniform in [low, high), seeded."""
    if n < 1 or high <= low:
        raise ValueError(f"need n >= 1 and low < high; got n={n}, low={low}, high={high}")
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(low, high, (n,), generator=g)
    parts = ([torch.tensor([bos])] if bos is not None else []) + [x, x]
    return torch.cat(parts).unsqueeze(0)


def token_losses(logits: Tensor, tokens: Tensor) -> Tensor:
    """Next-token cross-entropy (nats) [B, T − 1]: entry t − 1 is the loss of predicting ``tokens[:, t]``."""
    return F.cross_entropy(logits[:, :-1].float().transpose(1, 2), tokens[:, 1:], reduction="none")


def copy_losses(logits: Tensor, tokens: Tensor, n: int) -> tuple[float, float]:
    """Mean loss (nats/token) on the first copy (targets at positions 1..n) and on the second (n+1..2n).

    ``tokens`` is ``[BOS] + x + x`` [B, 2n + 1] and ``logits`` [B, 2n + 1, V]; the logit at position t − 1
    predicts the token at t. Averaged over the batch.
    """
    if tokens.shape[-1] != 2 * n + 1 or logits.shape[:2] != tokens.shape:
        raise ValueError(
            f"copy_losses expects tokens [B, 2n+1] and logits [B, 2n+1, V]; got {tuple(tokens.shape)}, "
            f"{tuple(logits.shape)}, n={n}"
        )
    loss = token_losses(logits, tokens)  # [B, 2n]; column t − 1 ↔ target t
    return float(loss[:, :n].mean()), float(loss[:, n:].mean())


def capture_patterns(model: nn.Module, tokens: Tensor) -> tuple[Tensor, dict[int, Tensor]]:
    """One forward pass with every ``blocks.{L}.attn.hook_pattern`` captured → (output, {layer: P [B, H, T, T]})."""
    out, cache = run_with_cache(model, tokens, lambda name: name.endswith(".attn.hook_pattern"))
    return out, patterns(cache)


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
        losses["mean"] = float(token_losses(logits, tokens).mean())
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
        P = pats[r["layer"]][0, r["head"]].float().numpy()
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
    return "nan" if math.isnan(value) else f"{value:.3f}"
