"""The one error guard of every ``attnlab`` command: a user's mistake is one line and exit status 2.

Whatever a user typed or pointed at (an option value, a sweep file, a results database, an output folder) is
checked where its meaning is known, and a bad one raises ``ConfigError`` naming the field, the value and what is
allowed. This guard turns that into ``error: field=value: problem (allowed: ...)`` on stderr, on one line even
when the message holds a newline, and exit status 2 (click's own status for a bad option). Anything else is a bug
and keeps its traceback. Ctrl-C ends with exit status 130 (128 + SIGINT, as a shell reports it) and a hint.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NoReturn, ParamSpec, TypeVar

import typer
from rich.text import Text

from attnlab.cli.console import make_console
from attnlab.errors import ConfigError

USAGE_ERROR = 2  # a bad value: click's status for a bad option
INTERRUPTED = 130  # 128 + SIGINT

P = ParamSpec("P")
R = TypeVar("R")

err_console = make_console(stderr=True)


def error_line(err: ConfigError) -> str:
    """``error: field=value: problem (allowed: ...)``, a multi-line message joined into one line."""
    return "error: " + " ".join(part.strip() for part in str(err).splitlines() if part.strip())


def fail(err: ConfigError) -> NoReturn:
    """Print ``err`` as one line on stderr (never read as rich markup) and exit with status 2."""
    err_console.print(Text(error_line(err)), soft_wrap=True, highlight=False)
    raise typer.Exit(USAGE_ERROR)


def guard(fn: Callable[[], R], *, on_interrupt: str = "") -> R:
    """Run ``fn``; a ``ConfigError`` becomes one line and exit status 2, Ctrl-C exit status 130."""
    try:
        return fn()
    except ConfigError as err:
        fail(err)
    except KeyboardInterrupt:
        hint = f": {on_interrupt}" if on_interrupt else ""
        err_console.print(Text.assemble(("interrupted", "yellow"), hint), soft_wrap=True, highlight=False)
        raise typer.Exit(INTERRUPTED) from None


def guarded(command: Callable[P, R]) -> Callable[P, R]:
    """``guard`` as a decorator of a typer command (typer reads the wrapped function's signature)."""

    @functools.wraps(command)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        return guard(lambda: command(*args, **kwargs))

    return run
