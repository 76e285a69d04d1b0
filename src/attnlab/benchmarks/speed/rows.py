"""The benchmark's result rows: one dict per (case, T, mode) with its measured value or why it was skipped."""

from __future__ import annotations

from typing import Any

from attnlab.benchmarks.speed.cases import Case


def skip_row(case: Case, t: int, mode: str, reason: str) -> dict[str, Any]:
    return row(case, t, mode, skipped=reason)


def row(case: Case, t: int, mode: str, **values: Any) -> dict[str, Any]:
    """A result row: which case, at which T and mode, and the measured values (or ``skipped``: why not)."""
    return {
        "case": case.name,
        "mechanism": case.mechanism,
        "backend": case.backend,
        "T": t,
        "mode": mode,
        "skipped": None,
        **values,
    }


def add_ratios(rows: list[dict[str, Any]], key: str, ratio_key: str) -> None:
    """row[ratio_key] = row[key] / SDPA's row[key] at the same T and mode."""
    floor = {(r["T"], r["mode"]): r.get(key) for r in rows if r["case"] == "softmax/sdpa" and not r.get("skipped")}
    for r in rows:
        base = floor.get((r["T"], r["mode"]))
        value = r.get(key)
        r[ratio_key] = value / base if (value is not None and base) else None


def lookup(rows: list[dict[str, Any]], case: str, t: int, mode: str, key: str) -> float | None:
    for r in rows:
        if r["case"] == case and r["T"] == t and r["mode"] == mode and not r.get("skipped"):
            return r.get(key)
    return None


def best_attnlab(rows: list[dict[str, Any]], mechanism: str, t: int, mode: str, key: str) -> tuple[str, float] | None:
    """The fastest / smallest attnlab backend of a mechanism (not the reference)."""
    found = [
        (r["backend"], r[key])
        for r in rows
        if r["mechanism"] == mechanism
        and r["T"] == t
        and r["mode"] == mode
        and not r.get("skipped")
        and r["backend"] not in ("x-transformers", "reference", "sdpa-mask")  # not attnlab paths
        and r.get(key) is not None
    ]
    return min(found, key=lambda x: x[1]) if found else None
