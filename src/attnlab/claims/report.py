"""The claims table and report: one row per claim (paper, verdict, effect and interval, seeds, command), then one
section per claim with its statement, rule, measurement and plot."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib.pyplot as plt

from attnlab.claims.base import Claim
from attnlab.claims.run import ClaimResult, claim_times, recorded
from attnlab.report import plots
from attnlab.report.document import Block, Code, Figure, Heading, Paragraph, Table, render_html, render_markdown, slug
from attnlab.report.markdown import format_duration
from attnlab.runner.store import Store

COLUMNS = ["claim", "paper", "verdict", "effect [95% interval]", "rule", "seeds", "time", "command"]


def effect_cell(result: ClaimResult | None) -> str:
    if result is None:
        return "not run"
    e = result.verdict.effect
    if e.exact:
        return f"{e.estimate:.4g} (exact)"
    if math.isnan(e.low):
        return f"{e.estimate:.4g} (n = {e.n})"
    return f"{e.estimate:+.4g} [{e.low:+.4g}, {e.high:+.4g}] (n = {e.n})"


def table_rows(
    claims: list[Claim], results: dict[str, ClaimResult], times: dict[str, float] | None = None
) -> list[list[str]]:
    """One row per claim; a claim without a result says "not run". ``time``: the wall time ``attnlab claims run``
    spent on the claim over all its sittings (``claim_time``); "–" where the database has none."""
    times = times or {}
    rows = []
    for claim in claims:
        result = results.get(claim.name)
        verdict = result.verdict.outcome if result else "not run"
        rows.append(
            [
                claim.name,
                f"{claim.paper.short} (arXiv:{claim.paper.arxiv})",
                verdict,
                effect_cell(result),
                claim.rule.describe(),
                claim.seeds,
                format_duration(times[claim.name]) if claim.name in times else "–",
                f"attnlab claims run {claim.name}",
            ]
        )
    return rows


def measurement_png(result: ClaimResult) -> bytes:
    """Each series of the measurement (a sweep claim: each arm's value per seed) as points and lines."""
    m = result.measurement
    fig, ax = plt.subplots(figsize=(6, 3.4), dpi=110, layout="constrained")
    plots._lines(ax, m.series, marker="o")  # the report's own line drawing: one line per label, NaNs left out
    ax.set_xlabel(plots.plain(m.xlabel))
    ax.set_ylabel(plots.plain(m.ylabel))
    ax.set_title(plots.plain(f"{result.claim.name}: {result.verdict.outcome}"))
    return plots.png_bytes(fig)


def claim_blocks(claim: Claim, result: ClaimResult | None) -> list[Block]:
    blocks: list[Block] = [
        Heading(3, claim.name),
        Paragraph([f"{claim.paper.short}, “{claim.paper.title}” (arXiv:{claim.paper.arxiv}), {claim.where}."]),
        Paragraph([f"Claim: {claim.statement}"]),
        Paragraph(
            [
                f"Rule, fixed before the run: {claim.rule.quantity}; holds when the 95% interval of the effect "
                f"satisfies {claim.rule.describe()}. Seeds: {claim.seeds}. Command: ",
                Code(claim.command),
                ".",
            ]
        ),
    ]
    if result is None:
        return [*blocks, Paragraph(["Not run yet."])]
    blocks.append(Paragraph([f"Verdict: {result.verdict.outcome} — {effect_cell(result)}; {result.verdict.reason}."]))
    rows = result.measurement.rows
    if rows:
        columns = list(dict.fromkeys(k for r in rows for k in r))
        blocks.append(Table(columns, [[_fmt(r.get(c, "")) for c in columns] for r in rows]))
    if result.measurement.series:
        blocks.append(Figure(f"claim_{slug(claim.name)}.png", measurement_png(result), claim.name))
    if claim.scale_note:
        blocks.append(Paragraph([f"Scale: {claim.scale_note}"]))
    return blocks


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {_fmt(v)}" for k, v in value.items())
    return str(value)


def total_time_line(times: dict[str, float]) -> str:
    """The wall time of the claims that have one, summed over their sittings."""
    return f"{len(times)} claim(s) with a recorded time, {format_duration(sum(times.values()))} in all sittings"


def report_blocks(
    claims: list[Claim], results: dict[str, ClaimResult], times: dict[str, float] | None = None
) -> list[Block]:
    """The claims table, then a section per claim."""
    times = times or {}
    counts = {
        o: sum(r.verdict.outcome == o for r in results.values()) for o in ("holds", "does not hold", "inconclusive")
    }
    summary = ", ".join(f"{n} {o}" for o, n in counts.items())
    blocks: list[Block] = [
        Heading(2, "Claims", anchor="claims"),
        Paragraph(
            [
                f"{len(claims)} claims, {len(results)} with a verdict ({summary}). Each verdict compares the 95% "
                "interval of the effect with the rule's margin: a claim holds when the whole interval is on the "
                "claimed side, does not hold when it is wholly on the other, and is inconclusive otherwise. "
                f"Time: what `attnlab claims run` spent on each claim on this database; {total_time_line(times)}."
            ]
        ),
        Table(COLUMNS, table_rows(claims, results, times), css="claims"),
    ]
    for claim in claims:
        blocks += claim_blocks(claim, results.get(claim.name))
    return blocks


def stored_claims(claims: list[Claim], store: Store) -> tuple[dict[str, ClaimResult], dict[str, float]]:
    """What ``store`` holds of ``claims`` (nothing is run): the verdicts of those whose experiment finished, and the
    time of those that ever ran there."""
    results = {c.name: r for c in claims if (r := recorded(c, store)) is not None}
    return results, claim_times(claims, store)


def write_claims_report(
    claims: list[Claim], results: dict[str, ClaimResult], out_dir: Path, times: dict[str, float] | None = None
) -> Path:
    """``claims.md`` (with its PNGs) and ``claims.html`` in ``out_dir``; returns the markdown's path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    blocks = report_blocks(claims, results, times)
    for block in blocks:
        if isinstance(block, Figure):
            plots.write_atomic(out_dir / block.name, block.png)
    title = "attnlab claims"
    path = plots.write_atomic(out_dir / "claims.md", render_markdown(title, blocks).encode())
    plots.write_atomic(out_dir / "claims.html", render_html(title, blocks).encode())
    return path
