"""Plots with matplotlib (Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def plot_curves(series: dict[str, list[tuple[int, float]]], path: Path, ylabel: str, title: str) -> Path:
    """One line per label: [(step, value)] → a PNG."""
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    for label, points in sorted(series.items()):
        if points:
            steps, values = zip(*points, strict=True)
            ax.plot(steps, values, label=label, linewidth=1.6)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
