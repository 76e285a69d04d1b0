"""The report's speed section: the newest ``attnlab speed --db`` result stored in the database.

Tables of time and peak memory as ratios to SDPA softmax at each T (forward + backward, and forward), the
issue's targets with their measured values, and plots of time and memory against T.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from attnlab.report import plots
from attnlab.report.document import Block, Code, Figure, Heading, Items, Paragraph, Table
from attnlab.runner.store import Store

MODES = ("forward+backward", "forward")


def _cell(row: dict[str, Any] | None, unit: str, scale: float) -> str:
    if row is None:
        return ""
    if row.get("skipped"):
        return "skipped"
    value, ratio = row.get("value"), row.get("ratio_vs_sdpa")
    if value is None:
        return ""
    ratio_text = "" if ratio is None else f"{ratio:.2f}× "
    return f"{ratio_text}({value * scale:.1f} {unit})"


def ratio_table(rows: list[dict[str, Any]], measure: str, mode: str) -> Table:
    """One row per case, one column per T: 'ratio× (value unit)'."""
    unit, scale = ("ms", 1000.0) if measure == "time" else ("MiB", 1.0)
    chosen = [r for r in rows if r["measure"] == measure and r["mode"] == mode]
    lengths = sorted({r["T"] for r in chosen})
    by_key = {(r["case"], r["T"]): r for r in chosen}
    cases = list(dict.fromkeys(r["case"] for r in chosen))
    body = [[case] + [_cell(by_key.get((case, t)), unit, scale) for t in lengths] for case in cases]
    return Table(["case"] + [f"T={t}" for t in lengths], body, numeric=set(range(1, len(lengths) + 1)), css="speed")


def _target_item(target: dict[str, Any]) -> list:
    holds = target.get("holds")
    verdict = "not measured" if holds is None else ("holds" if holds else "MISSED")
    measured = target.get("measured")
    value = "" if measured is None else f": {measured:.2f}"
    detail = f" ({target['detail']})" if target.get("detail") else ""
    return [f"{verdict} — {target['target']}{value}{detail}"]


def speed_blocks(store: Store) -> list[Block]:
    """The section, or nothing when the database holds no speed benchmark."""
    benchmarks = store.speed_benchmarks()
    if not benchmarks:
        return []
    newest = benchmarks[0]
    data, rows = newest["data"], store.speed_rows(newest["bench_id"])
    info, shape = data.get("machine", {}), data.get("shape", {})
    when = dt.datetime.fromtimestamp(newest["created"], dt.UTC)
    blocks: list[Block] = [
        Heading(2, "Speed and memory", anchor="speed"),
        Paragraph(
            [
                "Benchmark ",
                Code(newest["bench_id"]),
                f" ({len(benchmarks)} stored; the newest shown), {when:%Y-%m-%d %H:%M} UTC on "
                f"{newest.get('host') or '?'}: {info.get('cpu', '?')}, {info.get('threads', '?')} thread(s), "
                f"torch {info.get('torch', '?')}; B={shape.get('B')}, H={shape.get('H')}, D={shape.get('D')}, "
                "causal, float32. Cells: ratio to SDPA softmax at the same T (median time, or peak memory above "
                "the inputs), then the value. Made by ",
                Code("attnlab speed --db DB"),
                ".",
            ]
        ),
    ]
    for measure, what in (("time", "Time"), ("memory", "Peak memory")):
        for mode in MODES:
            table = ratio_table(rows, measure, mode)
            if table.rows:
                blocks += [Heading(3, f"{what}, {mode}"), table]
    targets = data.get("targets") or []
    if targets:
        blocks += [Heading(3, "Targets"), Items([_target_item(t) for t in targets])]
    for measure, key, ylabel in (("time", "median_s", "seconds"), ("memory", "peak_mib", "peak MiB")):
        measured = [r for r in rows if r["measure"] == measure]
        if measured:
            png = plots.speed_png(measured, key, "forward+backward", ylabel, f"{measure}, forward+backward vs T")
            caption = f"{measure} (forward + backward) against T, per mechanism and backend"
            blocks.append(Figure(f"speed_{measure}.png", png, caption))
    return blocks
