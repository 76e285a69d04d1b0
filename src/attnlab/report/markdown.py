"""The report of a results database: ``report.md`` (PNG files beside it) and a self-contained ``report.html``.

Per task: the leaderboard (best learning rate, mean over seeds; ranked by accuracy, or by loss with the
perplexity exp(loss) for language modelling — see ``tables.ranking_metric``); the ranking metric against model
width when the task has several widths (as Zoology's MQAR figure: one line per mechanism); the metrics against
evaluation length when runs report length-extrapolation metrics (``accuracy@2x``, ``loss@4x``, ...; x = factor
× training length); the loss and accuracy curves over training steps; the wall time per run. Then the failed
runs with the first line of their error, and every run with its status and wall time.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from attnlab.report import plots
from attnlab.report.document import (
    Block,
    Code,
    Figure,
    Heading,
    Items,
    Paragraph,
    Table,
    render_html,
    render_markdown,
    slug,
)
from attnlab.report.leaderboard_stats import final_rows
from attnlab.report.speed_section import speed_blocks
from attnlab.report.tables import (
    UNIT_METRICS,
    Entry,
    cells,
    extrapolation_key,
    fmt,
    interval_cell,
    leaderboard,
    leaderboard_caption,
    leaderboard_columns,
    lower_is_better,
    safe_exp,
)
from attnlab.runner.store import Store

Key = tuple[str, str, str, int]  # task, mechanism, position, width


def write_report(
    store: Store,
    out_dir: Path,
    sweep: str | None = None,
    title: str = "attnlab report",
    *,
    rank_by: str = "score",
    target: float | None = None,
    extra: Sequence[Block] = (),
) -> Path:
    """Write ``report.md`` (with its PNGs) and ``report.html`` into ``out_dir``; returns the markdown's path.

    ``sweep`` limits the report to one sweep's runs; ``rank_by`` and ``target`` are ``tables.leaderboard``'s;
    ``extra``: sections appended after the leaderboards and plots (the claims' section of a claims database).
    Every file is written to a temporary name and renamed.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = store.runs(sweep=sweep)
    curves: dict[str, list[tuple[int, str, float]]] = defaultdict(list)
    for run_id, step, name, value in store.metrics(sweep=sweep):
        curves[run_id].append((step, name, value))
    blocks = build_blocks(rows, curves, f"{store.path}", rank_by=rank_by, target=target) + speed_blocks(store)
    blocks += extra
    sweeps = [sweep] if sweep is not None else store.sweeps()
    timed = [(name, store.sittings(name)) for name in sweeps]
    blocks[1:1] = [Paragraph([f"Wall time of sweep {name}: {sittings_line(s)}."]) for name, s in timed if s]
    for block in blocks:
        if isinstance(block, Figure):
            plots.write_atomic(out_dir / block.name, block.png)
    md_path = plots.write_atomic(out_dir / "report.md", render_markdown(title, blocks).encode())
    plots.write_atomic(out_dir / "report.html", render_html(title, blocks).encode())
    return md_path


def format_duration(seconds: float) -> str:
    """``5025`` → ``"1 h 23 min 45 s"``; under a minute, seconds alone."""
    h, rest = divmod(round(seconds), 3600)
    m, sec = divmod(rest, 60)
    return " ".join(f"{v} {u}" for v, u in ((h, "h"), (m, "min"), (sec, "s")) if v or (u == "s" and not (h or m)))


def sittings_line(sittings: list[dict[str, Any]]) -> str:
    """A sweep's wall time over its sittings (``Store.sittings``): ``"1 h 5 min in 2 sitting(s) (42 min, 2×1
    threads, finished; …)"``; a sitting killed outright counts to its last finished run."""
    total = format_duration(sum(s["wall_s"] for s in sittings))
    parts = [
        f"{format_duration(s['wall_s'])}, {s['workers']}×{s['threads']} threads, {s['ended'] or 'killed'}"
        for s in sittings
    ]
    return f"{total} in {len(sittings)} sitting(s) ({'; '.join(parts)})"


def build_blocks(
    rows: list[dict[str, Any]],
    curves: dict[str, list[tuple[int, str, float]]],
    db: str,
    *,
    rank_by: str = "score",
    target: float | None = None,
) -> list[Block]:
    """The report's content from run rows (``Store.runs``) and their curves (run_id → [(step, name, value)])."""
    entries = leaderboard(rows, curves=curves, target=target, rank_by=rank_by)
    counts = defaultdict(int)
    for r in rows:
        counts[r["status"]] += 1
    now = dt.datetime.now(dt.UTC)
    blocks: list[Block] = [
        Paragraph(
            [
                "Database: ",
                Code(db),
                f"; {len(rows)} runs ({counts['done']} done, {counts['failed']} failed, "
                f"{counts['running'] + counts['queued']} not finished); written {now:%Y-%m-%d %H:%M} UTC.",
            ]
        ),
        Paragraph(
            [
                "Each leaderboard row is one (mechanism, position, width): the learning rate with the best mean "
                "over seeds, and the mean over seeds at that learning rate, with a 95% Student-t interval over "
                "seeds and a paired test against the task's best (Holm-corrected over the task). Tasks are ranked "
                "by accuracy, except language modelling (and tasks reporting no accuracy), ranked by loss in "
                "nats/token with the perplexity ppl = exp(loss). Intermediate rungs of a learning-rate search "
                "are not ranked."
            ]
        ),
    ]
    used: set[str] = set()
    for task in sorted({e.task for e in entries}):
        task_entries = [e for e in entries if e.task == task]
        task_rows = [r for r in rows if r["task"] == task]
        name = slug(task)
        while name in used:  # two task names with the same file-safe form: keep their files apart
            name += "_"
        used.add(name)
        blocks += task_blocks(task, task_entries, task_rows, curves, name, rank_by)
    blocks += failed_blocks(rows)
    blocks += all_runs_blocks(rows)
    return blocks


def _labeler(entries: list[Entry], with_width: bool = True) -> Callable[[Entry], str]:
    """Labels naming only what varies among ``entries`` (always the mechanism)."""
    vary_position = len({e.position for e in entries}) > 1
    vary_width = with_width and len({e.width for e in entries}) > 1

    def label(e: Entry) -> str:
        parts = [e.mechanism]
        if vary_position:
            parts.append(e.position)
        if vary_width:
            parts.append(f"d{e.width}")
        return " / ".join(parts)

    return label


def _chosen_runs(entries: list[Entry], rows: list[dict[str, Any]]) -> dict[Key, dict[str, Any]]:
    """Per entry, the finished run at its best learning rate with the lowest seed (whose curves are drawn)."""
    best = {(e.task, e.mechanism, e.position, e.width): e.best_lr for e in entries}
    chosen: dict[Key, dict[str, Any]] = {}
    for row in final_rows(rows):  # not an intermediate rung of a learning-rate search
        key = (row["task"], row["mechanism"], row["position"], row["width"])
        lowest = key not in chosen or row["seed"] < chosen[key]["seed"]
        if row["status"] == "done" and best.get(key) == row["lr"] and lowest:
            chosen[key] = row
    return chosen


def task_blocks(
    task: str,
    entries: list[Entry],
    rows: list[dict[str, Any]],
    curves: dict[str, list[tuple[int, str, float]]],
    name: str = "",
    rank_by: str = "score",
) -> list[Block]:
    """One task's section: leaderboard, width plot, extrapolation, curves, wall time.

    ``name`` is the file-safe stem of its PNGs and anchor (default: ``slug(task)``).
    """
    name = name or slug(task)
    metric = entries[0].metric
    columns = list(leaderboard_columns(metric, entries))
    better = "lower" if lower_is_better(metric) else "higher"
    ranked = "emergence step, then " if entries[0].emergence is not None and rank_by == "emergence" else ""
    blocks: list[Block] = [
        Heading(2, task, anchor=f"task-{name}"),
        Paragraph([leaderboard_caption(entries)]),
        Table(columns, [cells(e, columns) for e in entries], numeric=set(range(3, len(columns))), css="leaderboard"),
        Paragraph([f"Ranked by {ranked}{metric} ({better} is better) at the best learning rate."]),
    ]
    finished = [e for e in entries if e.score == e.score]
    label = _labeler(finished)

    widths = sorted({e.width for e in finished})
    if len(widths) >= 2:
        by_width = _labeler(finished, with_width=False)
        series: plots.Series = defaultdict(list)
        for e in finished:
            series[by_width(e)].append((float(e.width), e.score))
        png = plots.width_png(series, metric, f"{task}: {metric} against model width", metric == "accuracy")
        caption = f"{task}: {metric} (best learning rate, mean over seeds) against model width"
        blocks += [Heading(3, "By model width"), Figure(f"{name}_width.png", png, caption)]

    blocks += extrapolation_blocks(task, name, finished, rows, label)

    chosen = _chosen_runs(finished, rows)
    figures: list[Block] = []
    for curve, ylabel, what in (
        ("eval_loss", "eval loss (nats/token)", "loss"),
        ("eval_accuracy", "eval accuracy", "accuracy"),
    ):
        series = {}
        for e in finished:
            run = chosen.get((e.task, e.mechanism, e.position, e.width))
            if run is not None:
                points = [(float(s), v) for s, n, v in curves.get(run["run_id"], []) if n == curve]
                if points:
                    series[label(e)] = points
        if series:
            png = plots.curves_png(series, ylabel, f"{task}: {what} while training")
            caption = f"{task}: {ylabel} while training (best learning rate, lowest seed)"
            figures.append(Figure(f"{name}_{what}.png", png, caption))
    if figures:
        blocks += [Heading(3, "Training curves"), *figures]

    by_group = {(e.mechanism, e.position, e.width): e for e in finished}
    walls: dict[str, list[float]] = defaultdict(list)
    for r in rows:
        entry = by_group.get((r["mechanism"], r["position"], r["width"]))
        if entry is not None and r["status"] == "done" and r["wall_s"] is not None:
            walls[label(entry)].append(r["wall_s"])
    if walls:
        means = {k: sum(v) / len(v) for k, v in walls.items()}
        png = plots.bars_png(means, "seconds per run (mean over learning rates and seeds)", f"{task}: wall time")
        blocks += [Heading(3, "Wall time"), Figure(f"{name}_wall.png", png, f"{task}: wall time per run")]
    return blocks


def train_length(row: dict[str, Any]) -> int | None:
    """The run's training sequence length (its task's ``seq_len``), or None if its config cannot be read."""
    from attnlab.tasks import task_from_dict

    try:
        return int(task_from_dict(json.loads(row["config"])["task"]).seq_len)
    except Exception:  # an older or foreign config: extrapolation is then plotted against the factor alone
        return None


def extrapolation_blocks(
    task: str, name: str, entries: list[Entry], rows: list[dict[str, Any]], label: Callable[[Entry], str]
) -> list[Block]:
    """Metrics against evaluation length, when final metrics named ``<metric>@<factor>x`` exist."""
    keys: dict[str, dict[float, str]] = defaultdict(dict)  # base metric → factor → final metric name
    for e in entries:
        for metric in e.finals:
            parsed = extrapolation_key(metric)
            if parsed is not None:
                keys[parsed[0]][parsed[1]] = metric
    if not keys:
        return []
    for base in keys:
        keys[base].setdefault(1.0, base)  # the metric at the training length itself
    lengths = {train_length(r) for r in rows if r.get("config")}
    length = lengths.pop() if len(lengths) == 1 else None
    scale = float(length) if length else 1.0
    xlabel = "evaluation length (tokens)" if length else "evaluation length / training length"

    panels: dict[str, plots.Series] = defaultdict(lambda: defaultdict(list))
    for e in entries:
        for base, by_factor in keys.items():
            for factor, metric in by_factor.items():
                value = e.finals.get(metric, math.nan)
                if value == value:
                    panels[base][label(e)].append((factor * scale, value))
                    plain, _, variant = base.partition("[")
                    if plain == "loss" and e.metric == "loss":
                        panels["ppl" + _ + variant][label(e)].append((factor * scale, safe_exp(value)))
    unit = [m for m in panels if m.partition("[")[0] in UNIT_METRICS]
    title = f"{task}: length extrapolation" + (f" (trained at length {length})" if length else "")
    png = plots.extrapolation_png(panels, xlabel, title, float(length) if length else 1.0, unit_range=unit)

    columns = ["mechanism"]
    cells: list[tuple[str, float]] = []
    for base in sorted(keys, key=lambda b: (b.partition("[")[0] != "accuracy", b)):
        for factor in sorted(keys[base]):
            columns.append(f"{base} @{factor:g}x" + (f" ({factor * scale:g})" if length else ""))
            cells.append((keys[base][factor], factor))
    table = Table(
        columns,
        [[label(e), *(_with_interval(e, m) for m, _ in cells)] for e in entries],
        numeric=set(range(1, len(columns))),
        css="extrapolation",
    )
    caption = f"{task}: metrics against evaluation length (best learning rate, mean over seeds)"
    note = Paragraph(
        [
            "Columns: metric @ factor × training length (the length in tokens); metric[name]: the same weights "
            "evaluated with the position encoding name (train.extrapolate_positions). Each cell: the mean over "
            "seeds at the best learning rate and, with two seeds or more, its 95% Student-t interval over seeds "
            "(clipped to the metric's range, as the leaderboard's). – marks a metric that was not evaluated (NaN), "
            "e.g. learned absolute positions cannot represent a longer sequence."
        ]
    )
    return [Heading(3, "Length extrapolation"), Figure(f"{name}_extrapolation.png", png, caption), table, note]


def _with_interval(e: Entry, metric: str) -> str:
    """``0.812 [0.780, 0.844]``: the mean of ``metric`` and its interval over seeds; the mean alone without one."""
    mean = fmt(e.finals.get(metric, math.nan))
    interval = e.interval_of(metric)
    return f"{mean} {interval_cell(interval)}" if interval.has_interval and mean != "–" else mean


def failed_blocks(rows: list[dict[str, Any]]) -> list[Block]:
    """The failed runs, each with the first line of its error."""
    failed = [r for r in rows if r["status"] == "failed"]
    if not failed:
        return []
    items: list[list[Any]] = []
    for r in failed:
        first_line = (r["error"] or "").splitlines()[0] if r["error"] else ""
        where = f" {r['task']}, d{r['width']}, lr {r['lr']:g}, seed {r['seed']} — "
        items.append([Code(r["run_id"]), where, f"{r['mechanism']} / {r['position']}: {first_line}"])
    return [Heading(2, "Failed runs", anchor="failed"), Items(items)]


def all_runs_blocks(rows: list[dict[str, Any]]) -> list[Block]:
    """Every run: its axes, status, steps and wall time."""
    if not rows:
        return [Paragraph(["No runs in this database."])]
    columns = ["run id", "sweep", "task", "mechanism", "position", "width", "lr", "seed", "status", "steps", "wall s"]
    table_rows = []
    for r in sorted(rows, key=lambda r: (r["task"], r["mechanism"], r["position"], r["width"], r["lr"], r["seed"])):
        steps = r["final"].get("steps")
        table_rows.append(
            [
                r["run_id"],
                r["sweep"],
                r["task"],
                r["mechanism"],
                r["position"],
                str(r["width"]),
                f"{r['lr']:g}",
                str(r["seed"]),
                r["status"],
                f"{steps:.0f}" if isinstance(steps, int | float) else "",
                f"{r['wall_s']:.1f}" if r["wall_s"] is not None else "",
            ]
        )
    return [
        Heading(2, "All runs", anchor="runs"),
        Table(columns, table_rows, numeric={5, 6, 7, 9, 10}, css="runs"),
    ]
