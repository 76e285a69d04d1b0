"""Heatmaps of one value per attention head: a [layers, heads] grid as a PNG (layers down, heads across)."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from torch import Tensor

from attnlab.report.plots import plain, png_bytes, write_atomic


def head_grid_png(grid: Tensor, title: str, label: str, diverging: bool = True) -> bytes:
    """``grid`` [L, H] → PNG bytes. ``diverging``: a red-blue map centred on 0 (signed values such as a logit
    difference); otherwise viridis from 0 (attention weights). NaN cells (no value) are left blank."""
    values = grid.detach().float().cpu().numpy()
    n_layers, n_heads = values.shape
    finite = values[~(values != values)]
    top = float(abs(finite).max()) if finite.size else 1.0
    top = top if top > 0 and math.isfinite(top) else 1.0
    fig, ax = plt.subplots(figsize=(1.6 + 0.45 * n_heads, 1.2 + 0.22 * n_layers), dpi=110, layout="constrained")
    if diverging:
        image = ax.imshow(values, cmap="RdBu_r", vmin=-top, vmax=top, aspect="auto")
    else:
        image = ax.imshow(values, cmap="viridis", vmin=0.0, vmax=top, aspect="auto")
    fig.colorbar(image, ax=ax, label=plain(label))
    ax.set_xticks(range(n_heads))
    ax.set_yticks(range(n_layers))
    ax.tick_params(labelsize=6)
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_title(plain(title), fontsize=9)
    return png_bytes(fig)


def write_head_grid(grid: Tensor, path: Path, title: str, label: str, diverging: bool = True) -> Path:
    """``head_grid_png`` written to ``path`` (atomically)."""
    return write_atomic(path, head_grid_png(grid, title, label, diverging))
