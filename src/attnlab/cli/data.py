"""``attnlab data``: build the real-text corpora (``build``) and see what is built and buildable (``list``).

``data_app`` is a Typer app of its own; ``attnlab.cli.main`` mounts it as ``attnlab data``.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from attnlab.cli.console import make_console
from attnlab.cli.guard import guarded
from attnlab.data.corpora import (
    DEFAULT_SOURCE,
    SOURCES,
    CorpusError,
    build_corpus,
    check_name,
    corpus_path,
    data_dir,
    missing_commands,
    read_manifest,
)
from attnlab.errors import ConfigError

data_app = typer.Typer(add_completion=False, no_args_is_help=True, help="Real-text corpora for the lm task.")
console = make_console(160)  # the list's licence and description columns

STATUS_STYLE = {"ok": "green", "mismatch": "red", "unpinned": "yellow", "error": "red"}


def _styled(status: str) -> str:
    style = STATUS_STYLE.get(status, "")
    return f"[{style}]{escape(status)}[/{style}]" if style else escape(status)


@data_app.command()
@guarded
def build(
    names: Annotated[list[str] | None, typer.Argument(help="corpora to build (default: stdlib)")] = None,
    all_sources: Annotated[bool, typer.Option("--all", help="build every corpus")] = False,
    directory: Annotated[Path | None, typer.Option("--dir", help="data folder (default: $ATTNLAB_DATA)")] = None,
    no_verify: Annotated[bool, typer.Option("--no-verify", help="keep a build that misses its pinned sha256")] = False,
) -> None:
    """Build corpora into the data folder and check each against its pinned sha256."""
    if all_sources and names:
        raise ConfigError("names", " ".join(names), "give names or --all, not both")
    chosen = list(SOURCES) if all_sources else [check_name(n) for n in (names or [DEFAULT_SOURCE])]
    table = Table(title=f"corpora in {escape(str(data_dir(directory)))}", title_justify="left")
    for column, justify in (("name", "left"), ("bytes", "right"), ("sha256", "left"), ("seconds", "right")):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    notes: list[str] = []
    failed = False
    for name in chosen:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                result = build_corpus(name, directory, verify_sha=not no_verify)
            except (CorpusError, OSError) as err:  # a failed download, a pin mismatch, an unwritable folder
                failed = True
                table.add_row(name, "-", _styled("error"), "-")
                notes.append(f"{name}: {err}")
                continue
        table.add_row(name, f"{result.bytes:,}", _styled(result.status), f"{result.seconds:.1f}")
        if caught:  # a stdlib / pydoc_topics mismatch warns with the full reason
            notes.extend(f"warning: {w.message}" for w in caught)
        elif result.message:
            notes.append(f"{name}: {result.message}")
    console.print(table)
    for note in notes:
        console.print(escape(note))
    if failed:
        raise typer.Exit(1)


@data_app.command(name="list")
@guarded
def list_corpora(
    directory: Annotated[Path | None, typer.Option("--dir", help="data folder (default: $ATTNLAB_DATA)")] = None,
) -> None:
    """Every corpus source: whether it can be built here, whether and where it is built, its licence."""
    folder = data_dir(directory)
    table = Table(title=f"corpora (data folder: {escape(str(folder))})", title_justify="left")
    for column in ("name", "buildable here", "built", "bytes", "sha256", "licence", "description"):
        table.add_column(column, justify="right" if column == "bytes" else "left")
    for name, src in SOURCES.items():
        missing = missing_commands(name)
        buildable = "[green]yes[/green]" if not missing else f"[red]no: needs {escape(', '.join(missing))}[/red]"
        path = corpus_path(name, directory)
        manifest = read_manifest(name, directory) or {}
        if path.is_file():
            built, size = escape(path.name), f"{path.stat().st_size:,}"
            status = _styled(str(manifest.get("status", "no manifest")))
        else:
            built, size, status = "[dim]-[/dim]", "", ""
        table.add_row(name, buildable, built, size, status, escape(src.licence), escape(src.description))
    console.print(table)
