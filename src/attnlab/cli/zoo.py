"""``attnlab zoo`` (every registry entry and its capabilities) and ``attnlab docs`` (the generated zoo pages)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from attnlab.cli.console import console
from attnlab.cli.guard import guarded
from attnlab.report.tables import md_cell

zoo_app = typer.Typer(add_completion=False)

CAPABILITY_COLUMNS = ("causal", "non_causal", "cross", "kv_cache", "row_stochastic", "signed")


def _mark(value: bool) -> str:
    return "[green]yes[/green]" if value else "[dim]-[/dim]"


def zoo_markdown() -> str:
    """The compatibility table of every registry entry, as markdown (the README's table is this output)."""
    from attnlab.attention import HEADS, NORMALISERS
    from attnlab.attention.linear.feature_maps import FEATURE_MAPS
    from attnlab.position import POSITIONS

    header = ["axis", "name", *(c.replace("_", "-") for c in CAPABILITY_COLUMNS), "backends", "summary", "paper"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for axis, registry in (("normaliser", NORMALISERS), ("heads", HEADS), ("position", POSITIONS)):
        for e in registry.entries():
            caps = e.capabilities
            marks = ["✓" if getattr(caps, c) else "–" for c in CAPABILITY_COLUMNS]
            cells = [axis, f"`{e.name}`", *marks, ", ".join(caps.backends), e.summary, e.paper]
            lines.append("| " + " | ".join(md_cell(c) for c in cells) + " |")
    lines += ["", "Feature maps φ of the kernel-attention normalisers:", "", "| feature map | summary | paper |"]
    lines.append("|---|---|---|")
    lines += [f"| `{e.name}` | {md_cell(e.summary)} | {md_cell(e.paper)} |" for e in FEATURE_MAPS.entries()]
    return "\n".join(lines)


@zoo_app.command()
@guarded
def zoo(markdown: Annotated[bool, typer.Option(help="print a markdown table instead")] = False) -> None:
    """List every registered mechanism and position encoding with its capabilities."""
    from attnlab.attention import HEADS, NORMALISERS
    from attnlab.attention.linear.feature_maps import FEATURE_MAPS
    from attnlab.plugins import load_plugins
    from attnlab.position import POSITIONS

    load_plugins()  # installed plugins' entries are listed with the zoo's
    if markdown:
        print(zoo_markdown())
        return
    for title, registry in (("normalisers", NORMALISERS), ("heads", HEADS), ("positions", POSITIONS)):
        table = Table(title=f"{title} ({len(registry)})", title_justify="left")
        table.add_column("name", style="bold")
        for col in CAPABILITY_COLUMNS:
            table.add_column(col.replace("_", "-"))
        table.add_column("backends")
        table.add_column("paper")
        for e in registry.entries():
            caps = e.capabilities
            table.add_row(
                e.name,
                *(_mark(getattr(caps, c)) for c in CAPABILITY_COLUMNS),
                ", ".join(caps.backends),
                e.paper,
            )
        console.print(table)
    table = Table(title=f"feature maps ({len(FEATURE_MAPS)})", title_justify="left")
    for col in ("name", "summary", "paper"):
        table.add_column(col)
    for e in FEATURE_MAPS.entries():
        table.add_row(e.name, e.summary, e.paper)
    console.print(table)
    total = sum(len(r) for r in (NORMALISERS, HEADS, POSITIONS, FEATURE_MAPS))
    console.print(f"{total} entries; docs: docs/zoo/README.md, compatibility: docs/compatibility.md")


@zoo_app.command()
@guarded
def docs(out: Annotated[Path, typer.Option(help="docs folder")] = Path("docs")) -> None:
    """Write one page and one picture per registry entry, and the compatibility matrix."""
    from attnlab.cli.options import output_folder
    from attnlab.report.zoo_docs import write_docs

    output_folder("out", out)
    written = write_docs(out)
    console.print(f"wrote {len(written)} files under {out}/")
