"""Plots with matplotlib (Agg backend: no display needed), rendered to PNG bytes.

Every label may come from a results database, so ``$`` is escaped (matplotlib would read it as mathtext).
"""

from __future__ import annotations

import io
import math
import os
import uuid
from collections.abc import Sequence
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.figure import Figure

Series = dict[str, list[tuple[float, float]]]


def plain(text: object) -> str:
    """Text that matplotlib shows as it is (no mathtext)."""
    return str(text).replace("$", r"\$")


def png_bytes(fig: Figure) -> bytes:
    """The figure as PNG bytes; the figure is closed."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def write_atomic(path: Path, data: bytes) -> Path:
    """Write ``data`` to a temporary file beside ``path``, then rename it over ``path``."""
    tmp = temporary_beside(path)
    try:
        with open(tmp, "xb") as f:  # default permissions (umask), unlike mkstemp's 0600
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def temporary_beside(path: Path) -> Path:
    """A fresh, unused name in ``path``'s folder (created if missing) for writing before a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}.tmp"


def _lines(ax: plt.Axes, series: Series, marker: str | None = None) -> None:
    for label, points in sorted(series.items()):
        points = sorted(p for p in points if p[1] == p[1])
        if points:
            xs, ys = zip(*points, strict=True)
            ax.plot(xs, ys, label=plain(label), linewidth=1.6, marker=marker)
    if ax.lines:
        ax.legend(fontsize=7, loc="best")
    ax.grid(alpha=0.3)


def curves_png(series: Series, ylabel: str, title: str) -> bytes:
    """Training curves: one line per label, [(step, value)] → PNG bytes."""
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110, layout="constrained")
    _lines(ax, series)
    ax.set_xlabel("step")
    ax.set_ylabel(plain(ylabel))
    ax.set_title(plain(title))
    return png_bytes(fig)


def plot_curves(series: dict[str, list[tuple[int, float]]], path: Path, ylabel: str, title: str) -> Path:
    """One line per label: [(step, value)] → a PNG file (written atomically)."""
    return write_atomic(path, curves_png(series, ylabel, title))  # type: ignore[arg-type]


def width_png(series: Series, ylabel: str, title: str, unit_range: bool) -> bytes:
    """A metric against model width, one line per mechanism (Zoology's MQAR figure); x on a log2 axis."""
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110, layout="constrained")
    _lines(ax, series, marker="o")
    widths = sorted({x for points in series.values() for x, _ in points})
    ax.set_xscale("log", base=2)
    ax.set_xticks(widths, [f"{w:g}" for w in widths])
    ax.minorticks_off()
    if unit_range:
        ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("model width (d_model)")
    ax.set_ylabel(plain(ylabel))
    ax.set_title(plain(title))
    return png_bytes(fig)


def lr_png(panels: dict[str, Series], ylabel: str, title: str, log_y: bool = False) -> bytes:
    """A metric against the learning rate (log axis): one panel per key of ``panels`` (a width), one line per
    label within it, the same colour for a label in every panel; the learning-rate sensitivity plots."""
    labels = sorted({label for series in panels.values() for label in series})
    colours = {label: f"C{i % 10}" for i, label in enumerate(labels)}
    fig, axes = plt.subplots(
        1, max(1, len(panels)), figsize=(3.6 * max(1, len(panels)), 4.0), dpi=110, layout="constrained", sharey=True
    )
    axes = np.atleast_1d(axes)
    for ax, (name, series) in zip(axes, panels.items(), strict=False):
        for label in labels:
            points = sorted(p for p in series.get(label, []) if p[1] == p[1])
            if points:
                xs, ys = zip(*points, strict=True)
                ax.plot(xs, ys, marker="o", linewidth=1.6, color=colours[label], label=plain(label))
        ax.set_xscale("log")
        if log_y:
            ax.set_yscale("log")
        ax.set_xlabel("learning rate")
        ax.set_title(plain(name), fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(plain(ylabel))
    axes[0].legend(fontsize=7, loc="best")
    fig.suptitle(plain(title))
    return png_bytes(fig)


def extrapolation_png(
    panels: dict[str, Series], xlabel: str, title: str, train_length: float | None, unit_range: Sequence[str] = ()
) -> bytes:
    """One panel per metric: the metric against evaluation length, one line per mechanism; x on a log2 axis.

    ``train_length`` (if known) is marked with a dashed line; panels named in ``unit_range`` span [0, 1].
    """
    n = max(1, len(panels))
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n + 0.6, 4.0), dpi=110, squeeze=False, layout="constrained")
    for ax, (metric, series) in zip(axes[0], sorted(panels.items(), key=lambda kv: _panel_order(kv[0])), strict=False):
        _lines(ax, series, marker="o")
        xs = sorted({x for points in series.values() for x, _ in points})
        ax.set_xscale("log", base=2)
        if xs:
            ax.set_xticks(xs, [f"{x:g}" for x in xs])
        ax.minorticks_off()
        if train_length is not None:
            ax.axvline(train_length, color="grey", linestyle="--", linewidth=1)
        if metric in unit_range:
            ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel(plain(xlabel))
        ax.set_ylabel(plain(metric))
        ax.set_title(plain(metric))
    fig.suptitle(plain(title))
    return png_bytes(fig)


def _panel_order(metric: str) -> tuple[int, str]:
    return ({"accuracy": 0, "loss": 1, "ppl": 2}.get(metric, 3), metric)


def bars_png(values: dict[str, float], xlabel: str, title: str) -> bytes:
    """Horizontal bars, one per label, largest at the top."""
    items = sorted(((v, k) for k, v in values.items() if v == v and not math.isinf(v)), reverse=True)
    fig, ax = plt.subplots(figsize=(7, 0.9 + 0.32 * max(1, len(items))), dpi=110, layout="constrained")
    if items:
        heights, labels = zip(*items, strict=True)
        positions = range(len(items))
        ax.barh(list(positions), heights, color="tab:blue")
        ax.set_yticks(list(positions), [plain(label) for label in labels], fontsize=8)
        ax.invert_yaxis()
        for y, h in zip(positions, heights, strict=True):
            ax.text(h, y, f" {h:.3g}", va="center", fontsize=7)
    ax.set_xlabel(plain(xlabel))
    ax.set_title(plain(title))
    ax.grid(alpha=0.3, axis="x")
    return png_bytes(fig)


BACKEND_COLOURS = {  # one colour per backend in every panel of a speed plot
    "reference": "tab:blue",
    "chunked": "tab:orange",
    "flex": "tab:green",
    "sdpa": "tab:purple",
    "sdpa-mask": "tab:brown",
    "x-transformers": "tab:red",
}


def speed_png(rows: Sequence[dict], key: str, mode: str, ylabel: str, title: str) -> bytes:
    """A speed benchmark's value vs T on log-log axes: a panel per mechanism, a line per backend, SDPA dashed.

    ``attnlab speed`` writes it beside ``speed.json``; the report draws it from the database.
    """
    mechanisms = list(dict.fromkeys(r["mechanism"] for r in rows))
    cols = max(1, min(4, len(mechanisms)))
    n_rows = max(1, math.ceil(len(mechanisms) / cols))
    fig, axes = plt.subplots(n_rows, cols, figsize=(3.6 * cols, 2.9 * n_rows), dpi=90, squeeze=False)
    done = [r for r in rows if r["mode"] == mode and not r.get("skipped") and r.get(key) is not None]
    floor = sorted((r["T"], r[key]) for r in done if r["case"] == "softmax/sdpa")
    lengths = sorted({r["T"] for r in rows})
    for ax, mechanism in zip(axes.flat, mechanisms, strict=False):
        if floor:
            ax.plot(*zip(*floor, strict=True), "k--", lw=1, label="SDPA softmax")
        for backend in dict.fromkeys(r["backend"] for r in done if r["mechanism"] == mechanism):
            if (mechanism, backend) == ("softmax", "sdpa"):
                continue
            points = sorted((r["T"], r[key]) for r in done if (r["mechanism"], r["backend"]) == (mechanism, backend))
            colour = BACKEND_COLOURS.get(backend)
            ax.plot(*zip(*points, strict=True), marker="o", ms=3, label=plain(backend), color=colour)
        ax.set(xscale="log", yscale="log", xlabel="T", ylabel=plain(ylabel))
        ax.set_title(plain(mechanism), fontsize=9)
        ax.set_xticks(lengths, [str(t) for t in lengths], fontsize=6)
        ax.minorticks_off()
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    for ax in list(axes.flat)[len(mechanisms) :]:
        ax.axis("off")
    fig.suptitle(plain(title), fontsize=10)
    fig.tight_layout()
    return png_bytes(fig)
