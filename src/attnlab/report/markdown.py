"""A markdown report of a results database: the leaderboard per task and the accuracy curves."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from attnlab.report.plots import plot_curves
from attnlab.report.tables import leaderboard, markdown_table
from attnlab.runner.store import Store


def write_report(store: Store, out_dir: Path, sweep: str | None = None, title: str = "attnlab report") -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = store.runs(sweep=sweep)
    entries = leaderboard(rows)
    lines = [
        f"# {title}",
        "",
        f"Database: `{store.path}`; {len(rows)} runs "
        f"({sum(r['status'] == 'done' for r in rows)} done, {sum(r['status'] == 'failed' for r in rows)} failed); "
        f"written {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC.",
        "",
        "Accuracy: mean over seeds of the final evaluation, at the best learning rate.",
        "",
    ]
    for task in sorted({e.task for e in entries}):
        task_entries = [e for e in entries if e.task == task]
        lines += [f"## {task}", "", markdown_table(task_entries), ""]
        best = {(e.mechanism, e.position, e.width): e.best_lr for e in task_entries}
        series = {}
        for row in rows:
            key = (row["mechanism"], row["position"], row["width"])
            if (
                row["task"] == task
                and row["status"] == "done"
                and best.get(key) == row["lr"]
                and row["seed"] == min(r["seed"] for r in rows if (r["mechanism"], r["position"], r["width"]) == key)
            ):
                points = [(s, v) for s, n, v in store.curves(row["run_id"]) if n == "eval_accuracy"]
                series[f"{row['mechanism']} / {row['position']} / d{row['width']}"] = points
        png = plot_curves(series, out_dir / f"{task}_accuracy.png", "eval accuracy", f"{task}: accuracy while training")
        lines += [f"![{task} accuracy]({png.name})", ""]
    failed = [r for r in rows if r["status"] == "failed"]
    if failed:
        lines += ["## Failed runs", ""]
        for r in failed:
            first_line = (r["error"] or "").splitlines()[0] if r["error"] else ""
            lines.append(f"- `{r['run_id']}` {r['mechanism']} / {r['position']}: {first_line}")
        lines.append("")
    path = out_dir / "report.md"
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text("\n".join(lines))
    tmp.replace(path)
    return path
