"""Leaderboards from the results database: best over learning rates (as Zoology reports), mean over seeds."""

from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass
from typing import Any


@dataclass
class Entry:
    task: str
    mechanism: str
    position: str
    width: int
    best_lr: float
    accuracy: float  # mean over seeds at the best learning rate
    loss: float
    seeds: int
    steps: float  # mean steps taken (early stop)
    wall_s: float  # mean wall time per run
    failed: int  # failed runs in this group (all learning rates)


def leaderboard(rows: list[dict[str, Any]], metric: str = "accuracy") -> list[Entry]:
    """Group finished runs by (task, mechanism, position, width); choose the lr with the best mean metric."""
    groups: dict[tuple, dict[float, list[dict]]] = defaultdict(lambda: defaultdict(list))
    failed: dict[tuple, int] = defaultdict(int)
    for row in rows:
        key = (row["task"], row["mechanism"], row["position"], row["width"])
        if row["status"] == "done" and metric in row["final"]:
            groups[key][row["lr"]].append(row)
        elif row["status"] == "failed":
            failed[key] += 1
            groups.setdefault(key, defaultdict(list))
    out = []
    for key, by_lr in groups.items():
        if not by_lr:
            out.append(Entry(*key, float("nan"), float("nan"), float("nan"), 0, 0.0, 0.0, failed[key]))
            continue
        lr, runs = max(by_lr.items(), key=lambda kv: (statistics.fmean(r["final"][metric] for r in kv[1]), -kv[0]))
        out.append(
            Entry(
                *key,
                best_lr=lr,
                accuracy=statistics.fmean(r["final"][metric] for r in runs),
                loss=statistics.fmean(r["final"].get("loss", float("nan")) for r in runs),
                seeds=len(runs),
                steps=statistics.fmean(r["final"].get("steps", 0.0) for r in runs),
                wall_s=statistics.fmean(r["wall_s"] or 0.0 for r in runs),
                failed=failed[key],
            )
        )
    out.sort(key=lambda e: (e.task, -(e.accuracy if e.accuracy == e.accuracy else -1), e.mechanism, e.position))
    return out


COLUMNS = ("task", "mechanism", "position", "width", "best lr", "accuracy", "loss", "seeds", "steps", "s/run")


def entry_cells(e: Entry) -> list[str]:
    return [
        e.task,
        e.mechanism,
        e.position,
        str(e.width),
        f"{e.best_lr:g}",
        f"{e.accuracy:.3f}" + (f" ({e.failed} failed)" if e.failed else ""),
        f"{e.loss:.3f}",
        str(e.seeds),
        f"{e.steps:.0f}",
        f"{e.wall_s:.0f}",
    ]


def md_cell(text: str) -> str:
    """Text safe inside a markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown_table(entries: list[Entry]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(md_cell(c) for c in entry_cells(e)) + " |" for e in entries]
    return "\n".join(lines)
