"""The files ``attnlab longctx prefill`` and ``attnlab longctx kv`` write: tables (markdown, CSV) and plots.

They live with the CLI because plotting is the report layer's (``attnlab.report.plots``), which the experiments do
not import (the experiments compute rows; ``tests/lens/test_layering.py``).
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt

from attnlab.experiments.longctx_kv import SCORE_NAME, KVRow, markdown_tables
from attnlab.experiments.sparse_prefill import PATTERNS, PrefillRow, markdown_table
from attnlab.report.plots import plain, png_bytes, write_atomic


def write_prefill_outputs(rows: Sequence[PrefillRow], out: Path, header: str) -> list[Path]:
    """prefill.csv, prefill.md (``header`` then the table) and prefill.png (perplexity ratio vs speed-up)."""
    out.mkdir(parents=True, exist_ok=True)
    csv_path = out / "prefill.csv"
    with open(csv_path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([fld.name for fld in fields(PrefillRow)])
        for r in rows:
            writer.writerow(list(asdict(r).values()))
    md_path = write_atomic(out / "prefill.md", (header + "\n\n" + markdown_table(rows)).encode())
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110, layout="constrained")
    markers = dict(zip(PATTERNS, "o^sDvP", strict=True))
    for length in sorted({r.length for r in rows}):
        for name in PATTERNS:
            pts = [(r.speedup, r.ppl_ratio) for r in rows if r.length == length and r.pattern == name]
            if pts:
                xs, ys = zip(*sorted(pts), strict=True)
                ax.plot(xs, ys, marker=markers[name], linestyle="-", label=plain(f"{name} {length}"))
    ax.axhline(1.02, color="grey", linestyle=":", linewidth=1)
    ax.axvline(3.0, color="grey", linestyle=":", linewidth=1)
    ax.set_xscale("log")
    ax.set_xlabel("attention speed-up over dense SDPA (all layers, estimation included)")
    ax.set_ylabel("perplexity / dense")
    ax.set_title(plain(header.splitlines()[0].lstrip("# ")))
    ax.legend(fontsize=6, ncol=2)
    ax.grid(alpha=0.3)
    png_path = write_atomic(out / "prefill.png", png_bytes(fig))
    return [csv_path, md_path, png_path]


def write_csv(rows: Sequence[KVRow], path: Any) -> None:
    """Every row, one line each (the fields of ``KVRow``)."""
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[x.name for x in fields(KVRow)])
        writer.writeheader()
        writer.writerows(asdict(r) for r in rows)


def plot_rows(rows: Sequence[KVRow], task: str, x: str) -> bytes:
    """Score against compression ratio (``x="ratio"``, kvpress's figure) or against seconds, a panel per length."""
    lengths = sorted({r.length for r in rows if r.task == task})
    fig, axes = plt.subplots(
        1, len(lengths), figsize=(5 * len(lengths), 4), dpi=110, layout="constrained", squeeze=False
    )
    for ax, length in zip(axes[0], lengths, strict=True):
        cells = [r for r in rows if r.task == task and r.length == length]
        full = next(r for r in cells if r.policy == "full")
        for name in dict.fromkeys(r.policy for r in cells if r.policy != "full"):
            points = sorted((getattr(r, x), r.score) for r in cells if r.policy == name)
            ax.plot(*zip(*points, strict=True), marker="o", linewidth=1.4, label=plain(name))
        if x == "ratio":
            ax.axhline(full.score, color="black", linestyle="--", linewidth=1, label="full cache")
        else:
            ax.plot([full.seconds], [full.score], "k*", markersize=10, label="full cache")
        ax.set_xlabel("compression ratio (fraction removed)" if x == "ratio" else "seconds (compression + decoding)")
        ax.set_ylabel(plain(SCORE_NAME[task]))
        ax.set_title(plain(f"SmolLM2-135M, {task}, {length} tokens"))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    return png_bytes(fig)


def write_kv_outputs(rows: Sequence[KVRow], out: Any) -> list[Any]:
    """``kv.md``, ``kv.csv`` and, per task, ``kv_<task>_ratio.png`` and ``kv_<task>_time.png`` in folder ``out``."""
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    paths = [write_atomic(folder / "kv.md", markdown_tables(rows).encode())]
    write_csv(rows, folder / "kv.csv")
    paths.append(folder / "kv.csv")
    for task in dict.fromkeys(r.task for r in rows):
        for x, suffix in (("ratio", "ratio"), ("seconds", "time")):
            paths.append(write_atomic(folder / f"kv_{task}_{suffix}.png", plot_rows(rows, task, x)))
    return paths
