"""``attnlab check MODULE_OR_FILE``: the zoo's registry-wide invariants (``attnlab.checks``) on a user's entries.

The module (a dotted name on ``sys.path``, an installed plugin's module) or ``.py`` file is imported; the entries it
registers are found by comparing the registries before and after; every check runs on each, and a table says what
holds. Each failure is one line below it; the exit status is 1 when anything fails.
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from attnlab.cli.console import console
from attnlab.cli.guard import guarded
from attnlab.errors import ConfigError

check_app = typer.Typer(add_completion=False)

MARKS = {"pass": "[green]✓[/green]", "fail": "[red]✗[/red]", "n/a": "[dim]–[/dim]"}
FAILED = 1


@check_app.command()
@guarded
def check(
    module: Annotated[str, typer.Argument(help="a module name (my_attention, an installed plugin) or a .py file")],
) -> None:
    """Run the zoo's invariants (causality, masking, row sums, sign, gradcheck, KV cache, backends, bf16) on the
    entries MODULE registers; a table of what holds, one line per failure, exit status 1 if any fails."""
    from attnlab.checks import run_checks
    from attnlab.plugins import PluginError, entries_of, first_line, hint

    try:
        entries = entries_of(module)
    except PluginError:
        raise
    except Exception as exc:
        allowed = "a module name on sys.path or a .py file that registers entries"
        problem = f"cannot be imported ({first_line(exc)}): {hint(module)}"
        raise ConfigError("module", module, problem, allowed) from None
    if not entries:
        raise ConfigError("module", module, "registered no entries", "a module that calls NORMALISERS.register, ...")
    outcomes = run_checks(entries)
    rows: dict[tuple[str, str], dict[str, str]] = {}
    for o in outcomes:
        rows.setdefault((o.axis, o.name), {})[o.check] = MARKS[o.status]
    # one table per set of checks: attention entries (normalisers, heads, positions), tasks, feature maps
    tables: dict[tuple[str, ...], list[tuple[str, str]]] = {}
    for key, marks in rows.items():
        tables.setdefault(tuple(marks), []).append(key)
    # a fixed order whatever order the registries were created in: attention entries, feature maps, then tasks
    order = {"normaliser": 0, "heads": 1, "position": 2, "feature_map": 3, "task": 4}
    for checks, keys in sorted(tables.items(), key=lambda item: min(order.get(a, 9) for a, _ in item[1])):
        table = Table(title=f"attnlab check {escape(module)}", title_justify="left")
        table.add_column("entry", style="bold", no_wrap=True)
        for name in checks:
            table.add_column(name, justify="center")
        for axis, name in keys:
            table.add_row(escape(f"{axis} {name}"), *(rows[axis, name][c] for c in checks))
        console.print(table)
    failures = [o for o in outcomes if o.status == "fail"]
    for o in failures:
        console.print(f"[red]FAIL[/red] {escape(f'{o.axis} {o.name}: {o.check}: {o.detail}')}", soft_wrap=True)
    held = sum(o.status == "pass" for o in outcomes)
    console.print(
        f"{len(rows)} entries: {held} checks hold, {len(failures)} fail, "
        f"{sum(o.status == 'n/a' for o in outcomes)} do not apply"
    )
    if failures:
        raise typer.Exit(FAILED)
